"""The CS231n and original repository's import path of the update rules (core/training/optim.py):
`from core.optim import adam`, and `core.optim` for the solver's update_rule lookup."""
from core.training.optim import adam, rmsprop, sgd, sgd_momentum  # noqa: F401
