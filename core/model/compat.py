"""Files of the original `image-captioning-bottom-up` repository, and of this project before a
rename.

The original saved weights alone: `rnn_checkpoint.npz` / `lstm_checkpoint.npz` hold the eight
CaptioningRNN arrays (no config, no vocabulary), `transformer_model.pt` is a bare
`model.state_dict()`. Their sizes follow from the shapes, the cell type from Wh's width, the
vocabulary comes from the data it was trained on, and the transformer's head count from a flag
(the original trained with 2). Configs built here carry "format": "original".
"""
from core.util.errors import UserError
from core.model.rnn_model import CELLS

ORIGINAL_RNN_ARRAYS = ("W_embed", "W_proj", "b_proj", "Wx", "Wh", "b", "W_vocab", "b_vocab")
# in every original transformer state_dict
ORIGINAL_TRANSFORMER_KEY = "transformer.layers.0.linear1.weight"


def is_original_rnn(names):
    """Whether the array names of an .npz are exactly an original rnn/lstm checkpoint's."""
    return set(names) == set(ORIGINAL_RNN_ARRAYS)


def is_original_transformer(blob):
    """Whether a loaded .pt object is an original repository's bare transformer state_dict."""
    return isinstance(blob, dict) and ORIGINAL_TRANSFORMER_KEY in blob


def original_vocabulary(vocabulary, V, path):
    """idx_to_word for an original-format checkpoint (which stores none) of V words.

    vocabulary: idx_to_word, a callable returning it, or None."""
    if vocabulary is None:
        raise UserError(f"{path} is an original-format checkpoint without a vocabulary: pass the "
                        f"--data_dir it was trained with")
    idx_to_word = list(vocabulary() if callable(vocabulary) else vocabulary)
    if len(idx_to_word) != V:
        raise UserError(f"original-format checkpoint {path} has a {V}-word vocabulary, the data's "
                        f"has {len(idx_to_word)} words: pass the --data_dir it was trained with")
    return idx_to_word


def original_rnn_config(arrays, path, vocabulary):
    """The config of an original rnn/lstm .npz (name -> array of the eight arrays); ValueError when
    Wh fits no cell of three weights."""
    (V, W), (D, H) = arrays["W_embed"].shape, arrays["W_proj"].shape
    for name in ORIGINAL_RNN_ARRAYS:
        if arrays[name].dtype.kind != "f":
            raise ValueError(f"parameter {name} has dtype {arrays[name].dtype}, not a "
                             f"floating-point type")
    # rnn: H, lstm: 4H
    cells = {cell.gates * H: name for name, cell in CELLS.items() if len(cell.weights) == 3}
    cell = cells.get(arrays["Wh"].shape[1]) if arrays["Wh"].shape[0] == H else None
    if cell is None:
        raise ValueError(f"Wh has shape {arrays['Wh'].shape}: neither (H, H) for an rnn nor (H, "
                         f"4H) for an lstm, H={H}")
    return {"model": cell, "input_dim": D, "wordvec_dim": W, "hidden_dim": H,
            "dtype": arrays["W_embed"].dtype.name,
            "idx_to_word": original_vocabulary(vocabulary, V, path), "format": "original"}


def original_transformer_config(state, path, vocabulary, num_heads):
    """The config of an original `torch.save(model.state_dict())` (sizes from the shapes)."""
    E, D = state["visual_projection.weight"].shape
    layers = {int(k.split(".")[2]) for k in state if k.startswith("transformer.layers.")}
    if E % num_heads:
        raise UserError(f"original-format transformer {path} has width {E}, which --num_heads "
                        f"{num_heads} does not divide")
    return {"model": "transformer", "input_dim": D, "wordvec_dim": E, "num_heads": num_heads,
            "num_layers": len(layers), "max_length": state["positional_encoding.pe"].shape[1],
            "dim_feedforward": state[ORIGINAL_TRANSFORMER_KEY].shape[0], "dropout": 0.1,
            "idx_to_word": original_vocabulary(vocabulary, state["embedding.weight"].shape[0],
                                               path),
            "format": "original"}


def renamed(state):
    """This project's transformer files written before its layers moved under `transformer.layers`
    (as the original repository names them): `layers.{i}...` -> `transformer.layers.{i}...`."""
    return {(f"transformer.{k}" if k.startswith("layers.") else k): v for k, v in state.items()}
