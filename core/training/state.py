"""The resumable state of a training run, parsed and checked once when it is read.

A `*_last` checkpoint holds the model, its config (with the run's flags, `extra["args"]`, and the
best-checkpoint tracker, `extra["tracker"]`) and the solver's training state:
`{"loop": {...}, "optimizer": {...}}`. `TrainingState.parse` turns that raw state into a checked,
frozen object or raises ValueError naming what is wrong; nothing else reads the raw dict.
"""
import math
from dataclasses import dataclass

import numpy as np

from core.model.checkpoint import read_checkpoint
from core.model.registry import MODEL_TYPES
from core.util.errors import UserError

LOOP_KEYS = ("epoch", "iteration", "epoch_seconds", "rng", "history")
PER_EPOCH = ("train_loss", "val_loss", "learning_rate", "train_seconds")


def _count(loop, name, top=None, low=0):
    """A whole number of the loop state in [low, top] -> int; ValueError otherwise."""
    value = loop[name]
    whole = isinstance(value, int) and not isinstance(value, bool)
    if not whole or value < low or (top is not None and value > top):
        span = f"{low}..{top}" if top is not None else f"at least {low}"
        raise ValueError(f"its loop {name} {value!r} is outside this run's {span}")
    return value


@dataclass(frozen=True)
class TrainingState:
    """Where a run stopped: epochs completed, steps and items done in the epoch in progress (over
    all processes), the process count it ran on, the seconds the epoch has trained, the shuffling
    RNG state before that epoch's permutation, the history, the epochs it was asked for, the
    items an epoch held (None in files written before it was recorded), the solver's optimizer
    state (checked by the solver class) and the best-checkpoint tracker's state."""

    epoch: int
    iteration: int
    position: int
    world_size: int
    epoch_seconds: float
    rng: dict
    history: dict
    num_epochs: int
    num_items: object
    optimizer: dict
    tracker: dict

    @classmethod
    def parse(cls, raw, model, solver_class, tracker=None, batch_size=None):
        """raw: the file's training state; model: the weights it was saved with; solver_class: the
        solver that wrote it (its `check_optimizer_state(model, state)` raises ValueError);
        tracker: the best-checkpoint state of the file's extra; batch_size: the run's per-process
        batch (the position of files that do not record one) -> TrainingState. ValueError naming
        the first thing that is missing, of the wrong type or out of range."""
        loop = raw.get("loop") if isinstance(raw, dict) else None
        if not isinstance(loop, dict) or "optimizer" not in raw:
            raise ValueError("it has no loop or optimizer state")
        missing = set(LOOP_KEYS) - set(loop)
        if missing:
            raise ValueError(f"its loop state lacks {', '.join(sorted(missing))}")
        num_epochs = _count(loop, "num_epochs", low=1) if "num_epochs" in loop else None
        world_size = _count(loop, "world_size", top=1 << 16, low=1) if "world_size" in loop else 1
        num_items = _count(loop, "num_items", low=1) if loop.get("num_items") is not None else None
        epoch = _count(loop, "epoch", top=num_epochs)
        iteration = _count(loop, "iteration", top=num_items)
        if "position" in loop:
            position = _count(loop, "position", top=num_items)
        else:  # files written before the position was recorded: whole steps of the saved batch
            position = iteration * (batch_size or 0) * world_size
        seconds = loop["epoch_seconds"]
        if (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                or not math.isfinite(seconds) or seconds < 0):
            raise ValueError(f"its loop epoch_seconds {seconds!r} is not a finite number of "
                             f"seconds")
        try:
            np.random.PCG64().state = loop["rng"]
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"its shuffling RNG state is not a PCG64 state ({e})") from None
        history = loop["history"]
        if not isinstance(history, dict) or not all(isinstance(v, list) for v in history.values()):
            raise ValueError("its history is not a set of lists")
        lacking = {"loss", *PER_EPOCH} - set(history)
        if lacking:
            raise ValueError(f"its history lacks {', '.join(sorted(lacking))}")
        if any(len(history[k]) != epoch for k in PER_EPOCH):
            raise ValueError(f"its history does not hold {epoch} epochs")
        for key, values in history.items():
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ValueError(f"its history {key} holds values that are not numbers")
        if tracker is not None and not (isinstance(tracker, dict)
                                        and isinstance(tracker.get("metrics"), dict)):
            raise ValueError("its best-checkpoint state is not a dict of metrics")
        solver_class.check_optimizer_state(model, raw["optimizer"])
        return cls(epoch, iteration, position, world_size, float(seconds), loop["rng"],
                   {k: list(v) for k, v in history.items()}, num_epochs, num_items,
                   raw["optimizer"], tracker)


def load_training_state(path, device="cpu"):
    """A resumable checkpoint -> (model, config dict, core.training.state.TrainingState), the state
    parsed and checked once here; UserError naming what is wrong when it is damaged or crafted."""
    model, config, raw = read_checkpoint(path, device,
                               missing_hint="pass the *_last file that a training run wrote "
                                                          "next to its checkpoint to --resume")
    if raw is None:
        raise UserError(f"{path} holds weights but no training state, so training cannot resume "
                        f"from it: pass the *_last file that training.py writes after every epoch")
    extra = config.get("extra") if isinstance(config.get("extra"), dict) else {}
    saved = extra.get("args") if isinstance(extra.get("args"), dict) else {}
    try:
        state = TrainingState.parse(raw, model, MODEL_TYPES[config["model"]].solver_class,
                                    tracker=extra.get("tracker", {"metrics": {}}),
                                    batch_size=saved.get("batch_size"))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path} holds a damaged training state ({e}): not resumed; use an intact "
                        f"*_last file or start a new run") from None
    return model, config, state
