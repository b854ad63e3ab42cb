"""The CS231n and original repository's import path of the numpy solver
(core/training/solver_numpy.py)."""
from core.training.solver_numpy import CaptioningSolver, NumpySolver  # noqa: F401
