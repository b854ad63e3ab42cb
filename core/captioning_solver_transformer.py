"""The original repository's import path of the torch solver (core/training/solver_torch.py)."""
from core.training.solver_torch import CaptioningSolverTransformer, TorchSolver  # noqa: F401
