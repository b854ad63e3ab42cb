"""The one table of model types: a decoder is one row here, and the scripts, checkpoints and
tests read it instead of branching on names.

Adding a decoder: its model class (`config()`, `from_config(config, seed)`,
`count_parameters(config)`, `state_arrays()`/`load_state_arrays(arrays)`, `loss`, `max_length`
and the decoding step interface of core/model/decoding.py), one row of MODEL_TYPES, and its tests.
A recurrent cell of CaptioningRNN is a row of `core.model.rnn_model.CELLS` plus a row here.
"""
import importlib
from dataclasses import dataclass

from core.data.feature_kinds import FC7, FEATURE_KINDS, GRID, REGION_KINDS
from core.util.errors import UserError
from core.util.memory import check_fits


@dataclass(frozen=True)
class SizeFlag:
    """A size of a model, set by the training.py flag of the same name; tiny: its value in the
    tests' tiny models; check as core.training.config.Flag's."""

    type: type
    default: object
    help: str
    tiny: object
    check: str = "positive"


SIZE_FLAGS = {
    "hidden_dim": SizeFlag(int, 512, "hidden state size H of the recurrent cell", 12),
    "wordvec_dim": SizeFlag(int, 256, "word vector size W (the transformer's width E)", 8),
    "num_heads": SizeFlag(int, 4, "attention heads of the transformer", 2),
    "num_layers": SizeFlag(int, 2, "decoder layers of the transformer", 1),
    "dim_feedforward": SizeFlag(int, 2048, "feed-forward width of the transformer's layers", 16),
    "dropout": SizeFlag(float, 0.1, "dropout rate of the transformer", 0.0, "fraction"),
    "attention_dim": SizeFlag(int, 256, "attention size A of the attention LSTM (its regions' and "
                                        "h's projections)",
                              6),
    "alpha_c": SizeFlag(float, 1.0,
                        "weight of the attention LSTM's doubly stochastic attention penalty "
                                    "(every region looked at about once per caption; 0: off)", 0.5,
                        "nonnegative"),
}


@dataclass(frozen=True)
class Backend:
    """How the models of a backend are trained and saved: solver "module:Class" (imported when asked
    for, so that loading a checkpoint does not import the training layer), the checkpoint suffix,
    and whether --device and --amp apply."""

    solver: str
    suffix: str
    uses_torch: bool


BACKENDS = {"numpy": Backend("core.training.solver_numpy:NumpySolver", ".npz", False),
            "torch": Backend("core.training.solver_torch:TorchSolver", ".pt", True)}


@dataclass(frozen=True)
class ModelType:
    """One decoder type.

    model: "module:Class" of the class that builds and runs it (`model_class`); backend: a key of
    BACKENDS: "numpy" (weights are numpy arrays, saved as .npz, trained by core.training.optim's
    update rules) or "torch" (an nn.Module, saved as .pt, trained by a torch optimizer on
    --device); default_lr: its learning rate unless --lr is
    given; checkpoint: its default file name; size_flags: the names of SIZE_FLAGS that size it;
    features: the key of the kind of features it reads in core.data.feature_kinds.FEATURE_KINDS
    ((N, D) vectors, or Regions for a region decoder), unless training.py's --features names
    another: a region decoder reads every kind of regions (a checkpoint records its kind);
    capabilities: the training options only some decoders can use, that it can (training.py
    refuses the flag of one its row lacks): "scheduled_sampling" (its loss takes the input words,
    `inputs`, that scheduled sampling mixes).
    """

    model: str
    backend: str
    default_lr: float
    checkpoint: str
    size_flags: tuple
    features: str = FC7
    capabilities: tuple = ()

    @property
    def model_class(self):
        """The class named by `model` ("module:Class", imported when asked for, so that reading
        the table, as --help does, imports no torch)."""
        module, name = self.model.split(":")
        return getattr(importlib.import_module(module), name)

    @property
    def uses_torch(self):
        """Whether the model is a torch module (--device and --amp apply)."""
        return BACKENDS[self.backend].uses_torch

    @property
    def solver_class(self):
        """The solver class of its backend."""
        module, name = BACKENDS[self.backend].solver.split(":")
        return getattr(importlib.import_module(module), name)

    @property
    def feature_kind(self):
        """The row of core.data.feature_kinds.FEATURE_KINDS it reads unless told otherwise."""
        return FEATURE_KINDS[self.features]

    @property
    def feature_kinds(self):
        """Every kind of features it can read, its default first."""
        if not self.feature_kind.regions:
            return (self.features,)
        return (self.features, *(k for k in REGION_KINDS if k != self.features))


RNN_MODEL = "core.model.rnn_model:CaptioningRNN"  # one class, one row per cell type
RECURRENT_SIZES = ("wordvec_dim", "hidden_dim")
MIXED_INPUTS = ("scheduled_sampling",)  # the numpy decoders' losses take the words fed in
TRANSFORMER_SIZES = ("wordvec_dim", "num_heads", "num_layers", "dim_feedforward", "dropout")

MODEL_TYPES = {
    "rnn": ModelType(RNN_MODEL, "numpy", 5e-3, "rnn_checkpoint.npz", RECURRENT_SIZES,
                     capabilities=MIXED_INPUTS),
    "lstm": ModelType(RNN_MODEL, "numpy", 5e-3, "lstm_checkpoint.npz", RECURRENT_SIZES,
                      capabilities=MIXED_INPUTS),
    "gru": ModelType(RNN_MODEL, "numpy", 5e-3, "gru_checkpoint.npz", RECURRENT_SIZES,
                     capabilities=MIXED_INPUTS),
    "transformer": ModelType("core.model.transformer:CaptioningTransformer", "torch", 1e-3,
                             "transformer_model.pt", TRANSFORMER_SIZES),
    "attention_lstm": ModelType("core.model.attention_lstm:AttentionLSTM", "numpy", 5e-3,
                                "attention_lstm_checkpoint.npz",
                                RECURRENT_SIZES + ("attention_dim", "alpha_c"), features=GRID,
                                capabilities=MIXED_INPUTS),
    "updown": ModelType("core.model.updown:UpDown", "numpy", 5e-3, "updown_checkpoint.npz",
                        RECURRENT_SIZES + ("attention_dim",), features=GRID,
                        capabilities=MIXED_INPUTS),
    "region_transformer": ModelType("core.model.region_transformer:RegionTransformer", "torch",
                                    1e-3, "region_transformer_model.pt", TRANSFORMER_SIZES,
                                    features=GRID),
}


def integer_sizes():
    """Every whole-number size a checkpoint's config may hold (checked on load): the features' and
    caption lengths, the integer size flags, and what each kind of features adds."""
    return ("input_dim", "max_length", *(k for k, f in SIZE_FLAGS.items() if f.type is int),
            *(k for kind in FEATURE_KINDS.values() for k in kind.sizes))


def tiny_sizes():
    """The sizes of the tests' tiny models: each size flag's `tiny`."""
    return {k: f.tiny for k, f in SIZE_FLAGS.items()}


def checkpoint_features(config):
    """The kind of features a checkpoint's model reads: its config's "features", else (older
    checkpoints) its model type's."""
    return config.get("features") or model_type(config["model"]).features


def model_type(name):
    """The row of a model type name; ValueError for an unknown one."""
    if name not in MODEL_TYPES:
        raise ValueError(f'unknown model type "{name}"; choose from {", ".join(MODEL_TYPES)}')
    return MODEL_TYPES[name]


def build_model(name, data, sizes, seed=None):
    """A new model of type `name` for the data's features and vocabulary, sized by `sizes` (a dict
    holding at least the row's size_flags) -> model; UserError when the sizes do not fit together
    or the model cannot fit in this machine's memory."""
    kind = model_type(name)
    features = FEATURE_KINDS[data.get("features_kind", kind.features)]
    config = {"model": name, "input_dim": features.feature_size(data["train_features"]),
              "idx_to_word": list(data["idx_to_word"]),
              "max_length": max(50, data["train_captions"].shape[1]), "dtype": "float32",
              **{k: sizes[k] for k in kind.size_flags}}
    config.update(features.model_sizes(data["train_features"]))
    check_fits(kind.model_class.count_parameters(config), f"a {name} model of these sizes")
    try:
        return kind.model_class.from_config(config, seed=seed)
    except ValueError as e:
        raise UserError(f"cannot build a {name} with these sizes: {e}") from None
