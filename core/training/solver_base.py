"""The one training loop shared by both solvers (solver_numpy.py, solver_torch.py).

The loop: epochs over a seeded permutation of the step strategy's items (caption rows, or images
for self-critical training; steps.py), minibatches sharded over the processes, validation on a
fixed subset, history, callbacks, divergence checks, the resumable position, clean stops. Each
step, the strategy computes a loss and gradients through the solver's public `batch` and
`gradients` and returns them (a steps.StepResult); the loop applies the gradients (`apply`) and
records the loss and metrics. A solver adds how a (optionally per-caption weighted) loss gives
averaged gradients and how they change the weights, how a batch is scored without training
(`_eval_loss`), the learning rate and its decay, and its optimizer state.
"""
import math
import sys
import time

import numpy as np
from tqdm import tqdm

from core.util.distributed import Context
from core.training.state import TrainingState
from core.training.steps import CrossEntropy
from core.training.stops import clean_stops


class TrainingDiverged(Exception):
    """The training or validation loss became non-finite or grew far beyond its start."""


class SolverBase:
    """data: a dict from `core.data.coco_utils.load_coco_data`.

    num_epochs, batch_size: one epoch visits every item of the step strategy once, in a fresh
    random order, batch_size items per process and step. lr_decay: learning rate multiplier
    after each epoch. val_samples: size of the fixed, seeded subset of validation captions
    scored after each epoch. on_epoch_end: optional callable(solver, epoch) after each epoch's
    validation. save_state: optional callable(solver) that writes a resumable checkpoint, after
    each epoch and when a stop is requested (rank 0 only). max_iters: stop each epoch after this
    many steps (dry runs and timing). divergence_factor: TrainingDiverged when a batch loss is not
    finite or exceeds this many times the run's first one (cross-entropy only). step: the step
    strategy (default CrossEntropy()). stop_early: optional callable(solver) -> why to stop
    before the next epoch (a string) or None; asked before every epoch, also the first of a
    resumed run. dist: a core.util.distributed.Context; with K processes every
    rank draws the same permutation, a step takes K * batch_size items, each rank trains on its
    batch_size of them, the gradients are averaged weighted by each rank's share, and the losses,
    the validation loss and stop requests are the same on every rank.
    """

    def __init__(self, model, data, *, num_epochs=10, batch_size=100, lr_decay=1.0,
                 val_samples=1000,
                 seed=0, verbose=True, on_epoch_end=None, save_state=None, max_iters=None,
                 divergence_factor=10.0, dist=None, step=None, stop_early=None):
        self.model, self.data, self.dist = model, data, dist or Context()
        self.step_rule = step or CrossEntropy()
        self.num_epochs, self.batch_size, self.lr_decay = num_epochs, batch_size, lr_decay
        self.verbose, self.on_epoch_end, self.save_state = verbose, on_epoch_end, save_state
        self.max_iters, self.divergence_factor = max_iters, divergence_factor
        self.rng = np.random.default_rng(seed)
        num_val = data["val_captions"].shape[0]
        self.val_rows = np.sort(self.rng.choice(num_val, size=min(val_samples, num_val),
                                                replace=False))
        self.history = {"loss": [], "train_loss": [], "val_loss": [], "learning_rate": [],
                        "train_seconds": [], **{k: [] for k in self.step_rule.history_keys}}
        self.epoch = 0  # epochs completed
        self.iteration = 0  # steps done in the epoch in progress
        self.position = 0  # items of the epoch's permutation done (all processes together)
        self.epoch_seconds = 0.0  # training time spent in the epoch in progress
        # before the permutation of the epoch in progress
        self.epoch_rng_state = self.rng.bit_generator.state
        self.stop_requested = None  # why the run stopped early (a signal's name), else None
        self.stop_early, self.stopped_early = stop_early, None  # early stopping: the rule, why

    # the RunConfig fields (training.py's flags) that the loop reads, by keyword
    LOOP_FLAGS = {"num_epochs": "epochs", "batch_size": "batch_size", "lr_decay": "lr_decay",
                  "val_samples": "val_samples", "seed": "seed", "max_iters": "max_iters",
                  "divergence_factor": "divergence_factor"}
    OPTIONS = ()  # a solver's own flags, of the same names

    @classmethod
    def from_config(cls, model, data, config, ctx, **hooks):
        """The solver of a settled run: config, a RunConfig (core/training/flags.py) read whole
        (the learning rate, the loop's flags, the solver's own OPTIONS; --device on this
        process's device); ctx the run's core.util.distributed.Context; hooks: step, save_state,
        stop_early, on_epoch_end."""
        options = {k: getattr(config, k) for k in cls.OPTIONS}
        if "device" in options:
            options["device"] = ctx.local_device(config.device)
        loop = {k: getattr(config, flag) for k, flag in cls.LOOP_FLAGS.items()}
        return cls(model, data, learning_rate=config.lr, **options, **loop,
                   verbose=not config.quiet and ctx.is_main, dist=ctx, **hooks)

    def batch(self, split, rows):
        """rows (B,) caption indices -> features (B, D) or Regions, captions (B, L) int."""
        captions = self.data[f"{split}_captions"][rows]
        return self.features(split, self.data[f"{split}_image_idxs"][rows]), captions

    def features(self, split, images):
        """images (B,) image rows of a split -> their features (B, D) or Regions. Every rank reads
        its own rows, in step; a UserError that one rank meets (a damaged row of a region file
        read per minibatch that only its share holds) stops every rank with it, said once, instead
        of the others waiting in the step's collective."""
        return self.dist.agreed(lambda: self.data[f"{split}_features"][images])

    def gradients(self, features, captions, caption_weights=None, weight=1.0, dropout=True):
        """The loss of this rank's minibatch and its gradients, averaged over the ranks -> (loss
        (float), gradients: what `apply` takes). caption_weights: (B,) multipliers of each
        caption's cross-entropy, or None. weight: the rank's share of the step's items (1 in one
        process); the ranks' gradients are averaged with these weights. dropout: whether a model
        with dropout uses it (its training mode) or not (eval mode)."""
        raise NotImplementedError

    def apply(self, gradients):
        """Change the weights by one update of the optimizer with what `gradients` returned."""
        raise NotImplementedError

    def _eval_loss(self, features, captions):
        """Loss of a minibatch without training (float)."""
        raise NotImplementedError

    def _decay_lr(self, factor):
        """Multiply the learning rate by factor."""
        raise NotImplementedError

    def _optimizer_state(self):
        """The optimizer's state (and any RNG the step uses) as a nested dict of arrays/tensors and
        plain values."""
        raise NotImplementedError

    @staticmethod
    def check_optimizer_state(model, state):
        """ValueError when a saved `_optimizer_state()` does not fit the model (read before it is
        loaded)."""
        raise NotImplementedError

    def _load_optimizer_state(self, state):
        """Restore what `_optimizer_state` returned."""
        raise NotImplementedError

    @property
    def learning_rate(self):
        """The current learning rate (float)."""
        raise NotImplementedError

    def training_state(self):
        """Everything needed to continue this run exactly: {"loop": JSON-able dict, "optimizer":
        ...}."""
        loop = {"epoch": self.epoch, "iteration": self.iteration, "position": self.position,
                "world_size": self.dist.world_size, "epoch_seconds": self.epoch_seconds,
                "rng": self.epoch_rng_state, "history": self.history, "num_epochs": self.num_epochs,
                "num_items": self.step_rule.num_items(self.data)}
        return {"loop": loop, "optimizer": self._optimizer_state()}

    def load_training_state(self, state):
        """Continue from a core.training.state.TrainingState (or the raw `training_state()` dict,
        parsed here); the model's weights are restored separately. ValueError when the state does
        not fit this run: a position past its items, a history without the step's keys."""
        if not isinstance(state, TrainingState):
            state = TrainingState.parse(state, self.model, type(self), batch_size=self.batch_size)
        num_items = self.step_rule.num_items(self.data)
        if state.num_items not in (None, num_items) or state.position > num_items:
            raise ValueError(f"it stopped at item {state.position} of an epoch of "
                             f"{state.num_items}, this run's epochs hold {num_items}")
        if state.num_epochs is not None and state.epoch > self.num_epochs:
            raise ValueError(f"its loop epoch {state.epoch} is outside this run's "
                             f"0..{self.num_epochs}")
        lacking = set(self.history) - set(state.history)
        if lacking:
            raise ValueError(f"its history lacks {', '.join(sorted(lacking))}")
        self.epoch, self.iteration, self.position = state.epoch, state.iteration, state.position
        self.epoch_seconds, self.epoch_rng_state = state.epoch_seconds, state.rng
        self.history = {k: list(v) for k, v in state.history.items()}
        self._load_optimizer_state(state.optimizer)

    def val_loss(self):
        """Teacher-forced loss over the fixed validation subset (mean over captions; rank 0's value
        on every rank)."""
        total = 0.0
        for start in range(0, len(self.val_rows), self.batch_size):
            rows = self.val_rows[start:start + self.batch_size]
            total += self._eval_loss(*self.batch("val", rows)) * len(rows)
        return self.dist.broadcast(total / max(len(self.val_rows), 1))

    def _shard(self, items):
        """A step's items -> this rank's items and its weight (share of the step's items). A rank
        left without items trains on the first one with weight 0, so that every rank takes part."""
        B = self.batch_size
        mine = items[self.dist.rank * B:(self.dist.rank + 1) * B]
        return (mine, len(mine) / len(items)) if len(mine) else (items[:1], 0.0)

    def _check_loss(self, loss, where):
        """Raise TrainingDiverged when a batch loss is non-finite or far above the run's first
        one."""
        first = self.history["loss"][0] if self.history["loss"] else loss
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the training loss became {loss} at {where}")
        if self.step_rule.positive_loss and loss > self.divergence_factor * abs(first):
            raise TrainingDiverged(f"the training loss grew to {loss:.4g} at {where}, more than "
                                   f"{self.divergence_factor:g} times the first batch loss "
                                   f"{first:.4g}")

    def _agree(self, stop):
        """Whether any process was asked to stop (the same answer on every rank)."""
        return bool(self.dist.all_reduce_sum(np.array([bool(stop)], dtype=np.float64))[0])

    def train(self):
        """Run the remaining epochs -> the history dict (per-iteration `loss`, per-epoch
        `train_loss`, `val_loss`, `learning_rate`, `train_seconds` spent in training steps, and the
        step strategy's keys).

        On a requested stop (Ctrl-C, SIGTERM) it finishes the current step, calls save_state and
        returns early with `self.stop_requested` set. Raises TrainingDiverged.
        """
        num_items = self.step_rule.num_items(self.data)
        step_size = self.batch_size * self.dist.world_size  # items per step, over all ranks
        with clean_stops(self.verbose) as stop:
            while self.epoch < self.num_epochs:
                if self.stop_early is not None and not self.iteration:
                    self.stopped_early = self.dist.broadcast(self.stop_early(self))
                    if self.stopped_early:
                        break
                self.rng.bit_generator.state = self.epoch_rng_state
                order = self.rng.permutation(num_items)
                if not self._run_epoch(order, step_size, stop):
                    self._save_state()
                    return self.history
                self._end_epoch()
                self._save_state()
                # a stop after the last epoch: done
                if self.epoch < self.num_epochs and self._agree(stop):
                    self.stop_requested = stop.reason or "a signal to another process"
                    return self.history
        return self.history

    def _run_epoch(self, order, step_size, stop):
        """The epoch's remaining steps from self.position -> False when a stop cut it short."""
        iters = math.ceil(len(order) / step_size)
        if self.max_iters is not None:
            iters = min(iters, self.max_iters)
        bar = tqdm(total=iters, initial=self.iteration,
                   desc=f"epoch {self.epoch + 1}/{self.num_epochs}",
                   leave=False, mininterval=1.0,
                   # a bar only on a terminal: in a notebook or a log each redraw is a new chunk
                   disable=not self.verbose or not sys.stderr.isatty())
        try:
            while self.iteration < iters and self.position < len(order):
                items, weight = self._shard(order[self.position:self.position + step_size])
                start = time.perf_counter()
                result = self.step_rule.step(self, items, weight)  # what the step computed
                self.apply(result.gradients)
                # the step's loss and metrics and whether any rank was asked to stop, the same on
                # every rank
                keys = self.step_rule.history_keys
                agreed = self.dist.all_reduce_sum(np.array(
                    [result.loss * weight, *(result.metrics[k] * weight for k in keys),
                     bool(stop)]))
                loss, stopping = float(agreed[0]), agreed[-1]
                self.epoch_seconds += time.perf_counter() - start
                self._check_loss(loss, f"epoch {self.epoch + 1}, iteration {self.iteration + 1}")
                self.history["loss"].append(loss)
                for k, value in zip(keys, agreed[1:-1]):
                    self.history[k].append(float(value))
                self.iteration, self.position = self.iteration + 1, min(self.position + step_size,
                                                                        len(order))
                bar.update()
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False,
                                **{k: f"{self.history[k][-1]:.3f}"
                                   for k in self.step_rule.history_keys})
                if stopping:
                    self.stop_requested = stop.reason or "a signal to another process"
                    return False
            return True
        finally:
            bar.close()

    def _save_state(self):
        """Call save_state on rank 0."""
        if self.save_state is not None and self.dist.is_main:
            self.save_state(self)

    def _end_epoch(self):
        """Validation, history, logging, callback and learning-rate decay after an epoch's last
        step."""
        epoch = self.epoch + 1
        self.history["train_seconds"].append(self.epoch_seconds)
        self.history["train_loss"].append(float(np.mean(self.history["loss"][-self.iteration:])))
        self.history["learning_rate"].append(self.learning_rate)
        val = self.val_loss()
        if not math.isfinite(val):
            raise TrainingDiverged(f"the validation loss became {val} after epoch {epoch}")
        self.history["val_loss"].append(val)
        if self.verbose:
            # e.g. the self-critical reward and baseline: their epoch means
            keys = self.step_rule.history_keys
            means = "".join(f"  {k} {np.mean(self.history[k][-self.iteration:]):.4f}" for k in keys)
            print(f"epoch {epoch}/{self.num_epochs}  {self.step_rule.loss_name} "
                  f"{self.history['train_loss'][-1]:.4f}{means}  val loss (cross-entropy) "
                  f"{val:.4f}  lr {self.learning_rate:.2e}", flush=True)
        if self.on_epoch_end is not None:
            self.on_epoch_end(self, epoch)
        self._decay_lr(self.lr_decay)
        self.epoch, self.iteration, self.position, self.epoch_seconds = epoch, 0, 0, 0.0
        self.epoch_rng_state = self.rng.bit_generator.state
