"""The one table of model types: a decoder is one row here, and the scripts and checkpoints read it.

Adding a decoder: its model class (with `config`/`from_config(config, seed)`/`count_parameters`,
`SIZE_FLAGS`, the decoding step interface of core/decoding.py and `loss`), one row below, and
its tests. A recurrent cell for CaptioningRNN is a row of `core.model.rnn_model.CELLS` instead
of a new class.
"""
from dataclasses import dataclass

from core.captioning_solver import CaptioningSolver
from core.captioning_solver_transformer import CaptioningSolverTransformer
from core.model.rnn_model import CaptioningRNN
from core.model.transformer import CaptioningTransformer


@dataclass(frozen=True)
class ModelType:
    """model_class, the solver_class that trains it, its default learning rate, and its default
    checkpoint file, whose suffix is the format (.npz: numpy arrays + JSON config; .pt: torch
    tensors + config, the model runs on a torch device)."""

    model_class: type
    solver_class: type
    default_lr: float
    checkpoint: str

    @property
    def uses_torch(self):
        """Whether the model is a torch module (checkpoint .pt, --device applies)."""
        return self.checkpoint.endswith(".pt")


MODEL_TYPES = {
    "rnn": ModelType(CaptioningRNN, CaptioningSolver, 5e-3, "rnn_checkpoint.npz"),
    "lstm": ModelType(CaptioningRNN, CaptioningSolver, 5e-3, "lstm_checkpoint.npz"),
    "gru": ModelType(CaptioningRNN, CaptioningSolver, 5e-3, "gru_checkpoint.npz"),
    "transformer": ModelType(CaptioningTransformer, CaptioningSolverTransformer, 1e-3, "transformer_model.pt"),
}
