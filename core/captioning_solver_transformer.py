"""The original repository's import path of the torch solver (core/solver_torch.py)."""
from core.solver_torch import CaptioningSolverTransformer, TorchSolver  # noqa: F401
