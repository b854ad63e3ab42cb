"""Checkpoints that carry their own config and vocabulary and load without pickle, and the
original repository's files (weights alone), which load with a vocabulary from the data.

numpy models (rnn, lstm, gru): an .npz with one array per parameter plus `config`, a JSON string.
torch model (transformer): `torch.save({"config": dict, "state_dict": ..., "sha256": str})`,
loaded with `weights_only=True`; the digest covers every tensor and value in the file, so a
flipped bit is found (the .npz has the zip format's CRC for that).
A resumable checkpoint (`save_training_state`) is the same file plus the solver's training
state: optimizer state, loop position, RNG state and history (arrays in the .npz, a plain
nested dict of tensors in the .pt). Files are written atomically (core/fileio.py).
"""
import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError
from core.fileio import atomic_write
from core.model.rnn_model import CaptioningRNN
from core.registry import MODEL_TYPES


def _digest(obj, h=None):
    """sha256 hex digest of a nested structure of dicts, lists, tensors and plain values."""
    h = hashlib.sha256() if h is None else h
    if isinstance(obj, dict):
        for key in sorted(obj, key=str):
            h.update(repr(key).encode())
            _digest(obj[key], h)
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for item in obj:
            _digest(item, h)
        h.update(b"]")
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    else:
        h.update(repr(obj).encode())
    return h.hexdigest()


def _split_arrays(tree, arrays, prefix="state"):
    """Replace each numpy array leaf of a nested dict/list with {"__array__": key}, collecting
    the arrays in `arrays` (key -> array) -> the JSON-able tree."""
    if isinstance(tree, dict):
        return {k: _split_arrays(v, arrays, f"{prefix}.{k}") for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_split_arrays(v, arrays, f"{prefix}.{i}") for i, v in enumerate(tree)]
    if isinstance(tree, np.ndarray):
        arrays[prefix] = tree
        return {"__array__": prefix}
    if isinstance(tree, np.generic):
        return tree.item()
    return tree


def _join_arrays(tree, arrays):
    """Inverse of _split_arrays: placeholders -> arrays from `arrays` (a loaded .npz)."""
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            return arrays[tree["__array__"]]
        return {k: _join_arrays(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join_arrays(v, arrays) for v in tree]
    return tree


def _write(model, path, extra=None, training_state=None):
    config = dict(model.config(), **({"extra": extra} if extra else {}))
    if not MODEL_TYPES[model.model_type].uses_torch:
        arrays = {k: np.ascontiguousarray(v) for k, v in model.params.items()}
        if training_state is not None:
            config["training_state"] = _split_arrays(training_state, arrays)
        atomic_write(path, lambda f: np.savez(f, config=np.array(json.dumps(config)), **arrays))
    else:
        blob = {"config": config, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
        if training_state is not None:
            blob["training_state"] = training_state
        blob["sha256"] = _digest(blob)
        atomic_write(path, lambda f: torch.save(blob, f))


def save_checkpoint(model, path, extra=None):
    """Save a model of a type in core.registry.MODEL_TYPES to `path`.

    extra: optional JSON-serialisable dict stored with the config (dataset name, training info).
    Raises UserError when the file cannot be written (the previous file is kept).
    """
    _write(model, path, extra)


def save_training_state(solver, path, extra=None):
    """Save the solver's model with everything `--resume` needs (solver.training_state())."""
    _write(solver.model, path, extra, solver.training_state())


def _model_class(config):
    """The class of the model a config describes (ValueError for an unknown model type)."""
    if config.get("model") not in MODEL_TYPES:
        raise ValueError(f'unknown model type "{config.get("model")}"')
    return MODEL_TYPES[config["model"]].model_class


def _check_finite(named_arrays, path):
    for name, value in named_arrays:
        finite = torch.isfinite(value).all() if isinstance(value, torch.Tensor) else np.isfinite(value).all()
        if not bool(finite):
            raise UserError(f"checkpoint {path} holds non-finite weights (NaN or inf in {name}): not loaded; "
                            "use an earlier checkpoint")


ORIGINAL_RNN_ARRAYS = ("W_embed", "W_proj", "b_proj", "Wx", "Wh", "b", "W_vocab", "b_vocab")


def _original_vocabulary(vocabulary, V, path):
    """idx_to_word for an original-format checkpoint (which stores none) of V words."""
    if vocabulary is None:
        raise UserError(f"{path} is an original-format checkpoint without a vocabulary: pass the --data_dir "
                        "it was trained with")
    idx_to_word = list(vocabulary() if callable(vocabulary) else vocabulary)
    if len(idx_to_word) != V:
        raise UserError(f"original-format checkpoint {path} has a {V}-word vocabulary, the data's has "
                        f"{len(idx_to_word)} words: pass the --data_dir it was trained with")
    return idx_to_word


def _copy_arrays(model, f):
    """Copy the arrays of a loaded .npz into a CaptioningRNN's params, checking each shape."""
    for name, value in model.params.items():
        if f[name].shape != value.shape:
            raise ValueError(f"parameter {name} has shape {f[name].shape}, expected {value.shape}")
        model.params[name] = f[name].astype(value.dtype)


def _original_rnn(f, path, vocabulary):
    """The original repository's rnn/lstm .npz (exactly the eight CaptioningRNN arrays) -> model, config."""
    (V, W), (D, H) = f["W_embed"].shape, f["W_proj"].shape
    cell = {H: "rnn", 4 * H: "lstm"}.get(f["Wh"].shape[1]) if f["Wh"].shape[0] == H else None
    if cell is None:
        raise ValueError(f"Wh has shape {f['Wh'].shape}: neither (H, H) for an rnn nor (H, 4H) for an lstm, H={H}")
    config = {"model": cell, "input_dim": D, "wordvec_dim": W, "hidden_dim": H, "dtype": f["W_embed"].dtype.name,
              "idx_to_word": _original_vocabulary(vocabulary, V, path), "format": "original"}
    model = CaptioningRNN.from_config(config)
    _copy_arrays(model, f)
    return model, config


def _original_transformer_config(state, path, vocabulary, num_heads):
    """Config of the original repository's `torch.save(model.state_dict())` (sizes from the shapes)."""
    E, D = state["visual_projection.weight"].shape
    layers = {int(k.split(".")[2]) for k in state if k.startswith("transformer.layers.")}
    if E % num_heads:
        raise UserError(f"original-format transformer {path} has width {E}, which --num_heads {num_heads} "
                        "does not divide")
    return {"model": "transformer", "input_dim": D, "wordvec_dim": E, "num_heads": num_heads,
            "num_layers": len(layers), "max_length": state["positional_encoding.pe"].shape[1],
            "dim_feedforward": state["transformer.layers.0.linear1.weight"].shape[0], "dropout": 0.1,
            "idx_to_word": _original_vocabulary(vocabulary, state["embedding.weight"].shape[0], path),
            "format": "original"}


def _read(path, device, vocabulary=None, num_heads=2):
    """-> model, config, training state (or None) of a checkpoint file; UserError when unreadable."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: train one with `python training.py --model ...` "
                        "or pass --checkpoint")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path} is not a checkpoint of this project ({e})") from None
    try:
        if "config.npy" in names or set(names) == {f"{k}.npy" for k in ORIGINAL_RNN_ARRAYS}:
            with np.load(path, allow_pickle=False) as f:
                if "config" not in f:
                    model, config = _original_rnn(f, path, vocabulary)
                    state = None
                else:
                    config = json.loads(str(f["config"]))
                    model = _model_class(config).from_config(config)
                    _copy_arrays(model, f)
                    state = config.pop("training_state", None)
                    state = _join_arrays(state, f) if state is not None else None
            _check_finite(model.params.items(), path)
            return model, config, state
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(blob, dict) and "transformer.layers.0.linear1.weight" in blob:  # the original's state_dict
            blob = {"config": _original_transformer_config(blob, path, vocabulary, num_heads), "state_dict": blob}
        if not isinstance(blob, dict) or "config" not in blob or "state_dict" not in blob:
            raise ValueError("it holds no config and state_dict")
        stored = blob.pop("sha256", None)
        if stored is not None and stored != _digest(blob):
            raise UserError(f"checkpoint {path} is corrupt (its checksum does not match its contents): not loaded")
        config = blob["config"]
        _check_finite(blob["state_dict"].items(), path)
        model = _model_class(config).from_config(config)
        state_dict = {(f"transformer.{k}" if k.startswith("layers.") else k): v  # files written before the rename
                      for k, v in blob["state_dict"].items()}
        model.load_state_dict(state_dict)
        model.to(device)
        model.eval()
        return model, config, blob.get("training_state")
    except UserError:
        raise
    except pickle.UnpicklingError:
        raise UserError(f"{path} holds pickled Python objects, which could run code when loaded: "
                        "not loaded (this project reads only tensors and plain values)") from None
    except Exception as e:  # a corrupt or foreign file: say which and why, not a traceback
        raise UserError(f"{path} is not a readable checkpoint of this project ({type(e).__name__}: {e})") from None


def load_checkpoint(path, device="cpu", vocabulary=None, num_heads=2):
    """Rebuild a model from a checkpoint file -> (model, config dict).

    Reads this project's files (config and vocabulary inside) and the original repository's
    (`rnn_checkpoint.npz`/`lstm_checkpoint.npz`: the eight arrays alone; `transformer_model.pt`:
    a bare state_dict): their sizes come from the shapes, their vocabulary from `vocabulary`
    (idx_to_word, or a callable returning it; it must have the checkpoint's V words), an original
    transformer's head count from num_heads. config["format"] is "original" for those.
    Raises UserError when the file is missing, is not a checkpoint, is corrupt or holds
    non-finite weights.
    """
    model, config, _ = _read(path, device, vocabulary, num_heads)
    return model, config


def load_training_state(path, device="cpu"):
    """A resumable checkpoint -> (model, config dict, training state for solver.load_training_state)."""
    model, config, state = _read(path, device)
    if state is None:
        raise UserError(f"{path} holds weights but no training state, so training cannot resume from it: "
                        "pass the *_last file that training.py writes after every epoch")
    return model, config, state


def check_checkpoint(config, path, model_type, idx_to_word):
    """Raise UserError when a loaded checkpoint does not match the --model flag or the data's vocabulary."""
    if config["model"] != model_type:
        raise UserError(f'checkpoint {path} holds a "{config["model"]}" model, not "{model_type}": '
                        f"pass --model {config['model']} or another --checkpoint")
    if list(config["idx_to_word"]) != list(idx_to_word):
        raise UserError(f"checkpoint {path} was trained with a different vocabulary "
                        f"({len(config['idx_to_word'])} words) than the data ({len(idx_to_word)} words): "
                        "use the --data_dir it was trained on")
