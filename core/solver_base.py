"""The one training loop shared by both captioning solvers.

A subclass says how one step computes the (optionally per-caption weighted) loss and updates
the weights (`_update`), how a batch is scored without training (`_eval_loss`), how the
learning rate decays (`_decay_lr`) and what its optimizer state is
(`_optimizer_state`/`_load_optimizer_state`); everything else (epochs over shuffled
captions, minibatches, validation on a fixed subset, history, logging, best-model
callback, divergence checks, resumable state, clean stops on Ctrl-C/SIGTERM, and the
self-critical step that samples, rewards and weights captions) lives here.
"""
import contextlib
import math
import signal
import threading
import time

import numpy as np
from tqdm import tqdm

from core.coco_utils import decode_captions
from core.decoding import greedy_search, sample_search
from core.distributed import Context


class SelfCritical:
    """How SolverBase trains self-critically (Rennie et al., 2017) instead of by cross-entropy.

    cider: a core.cider.CiderD over the training references; num_samples: captions sampled per
    image; baseline: "greedy" (the reward of the greedy caption) or "mean" (the mean reward of the
    image's other samples); temperature: of the sampling; max_length: longest sampled caption.
    """

    def __init__(self, cider, num_samples=5, baseline="greedy", temperature=1.0, max_length=16):
        if baseline not in ("greedy", "mean"):
            raise ValueError(f'baseline must be "greedy" or "mean", got "{baseline}"')
        if baseline == "mean" and num_samples < 2:
            raise ValueError("the mean baseline needs at least 2 samples per image")
        self.cider, self.num_samples, self.baseline = cider, num_samples, baseline
        self.temperature, self.max_length = temperature, max_length


class TrainingDiverged(Exception):
    """The training or validation loss became non-finite or grew far beyond its start."""


class SolverBase:
    """data: a dict from `core.coco_utils.load_coco_data`.

    num_epochs, batch_size: one epoch visits every training caption once, in a fresh
    random order. lr_decay: learning rate multiplier after each epoch. val_samples:
    size of the fixed, seeded subset of validation captions scored after each epoch.
    on_epoch_end: optional callable(solver, epoch, is_best) called after each epoch,
    with is_best true when the validation loss is the lowest so far. save_state: optional
    callable(solver) that writes a resumable checkpoint; called after each epoch and when a
    stop is requested. max_iters: stop each epoch after this many minibatches (dry runs and
    timing; None: the whole epoch). divergence_factor: training stops (TrainingDiverged) when a
    batch loss exceeds this many times the run's first batch loss, or is not finite.
    dist: a core.distributed.Context; with K processes each epoch's permutation is the same on
    every rank, a step takes K * batch_size captions and each rank trains on its batch_size of
    them, the gradients are averaged (weighted by each rank's share), and the losses, the
    validation loss and any stop request are the same on every rank. save_state runs on rank 0 only.
    """

    def __init__(self, model, data, *, num_epochs=10, batch_size=100, lr_decay=1.0, val_samples=1000,
                 seed=0, verbose=True, on_epoch_end=None, save_state=None, max_iters=None, divergence_factor=10.0,
                 dist=None, scst=None):
        self.dist = dist or Context()
        self.scst = scst
        self.model = model
        self.data = data
        self.num_epochs = num_epochs
        self.batch_size = batch_size
        self.lr_decay = lr_decay
        self.verbose = verbose
        self.on_epoch_end = on_epoch_end
        self.save_state = save_state
        self.max_iters = max_iters
        self.divergence_factor = divergence_factor
        self.rng = np.random.default_rng(seed)
        num_val = data["val_captions"].shape[0]
        self.val_rows = np.sort(self.rng.choice(num_val, size=min(val_samples, num_val), replace=False))
        self.history = {"loss": [], "train_loss": [], "val_loss": [], "learning_rate": [], "train_seconds": []}
        if scst is not None:
            self.history.update(reward=[], baseline=[])
            self.sample_rng = np.random.default_rng([seed, 1])  # the self-critical samples' own stream
        self.best_val_loss = math.inf
        self.best_epoch = None
        self.epoch = 0  # epochs completed
        self.iteration = 0  # minibatches done in the epoch in progress
        self.epoch_seconds = 0.0  # training time spent in the epoch in progress
        self.epoch_rng_state = self.rng.bit_generator.state  # before the permutation of the epoch in progress
        self.stop_requested = None  # name of the signal that asked for a clean stop

    def _batch(self, split, rows):
        """rows (B,) caption indices -> features (B, D) float32, captions (B, L) int."""
        captions = self.data[f"{split}_captions"][rows]
        features = self.data[f"{split}_features"][self.data[f"{split}_image_idxs"][rows]]
        return features, captions

    def _update(self, features, captions, caption_weights, weight):
        """One update on this rank's minibatch -> its loss (float). caption_weights: (B,) multipliers
        of each caption's cross-entropy, or None (self-critical training passes reward - baseline).
        weight: the rank's share of the step's captions (1 in one process); the gradients of all
        ranks are averaged with these weights before the update, so that every rank applies the same one."""
        raise NotImplementedError

    def _train_step(self, features, captions, weight=1.0):
        """One teacher-forced (cross-entropy) update -> its loss (float)."""
        return self._update(features, captions, None, weight)

    def _eval_loss(self, features, captions):
        """Loss of a minibatch without training (float)."""
        raise NotImplementedError

    def _decay_lr(self, factor):
        """Multiply the learning rate by factor."""
        raise NotImplementedError

    def _optimizer_state(self):
        """The optimizer's state (and any RNG the step uses) as a nested dict of arrays/tensors and plain values."""
        raise NotImplementedError

    def _load_optimizer_state(self, state):
        """Restore what `_optimizer_state` returned."""
        raise NotImplementedError

    @property
    def learning_rate(self):
        """The current learning rate (float)."""
        raise NotImplementedError

    def training_state(self):
        """Everything needed to continue this run exactly: {"loop": JSON-able dict, "optimizer": ...}."""
        loop = {"epoch": self.epoch, "iteration": self.iteration, "epoch_seconds": self.epoch_seconds,
                "rng": self.epoch_rng_state, "history": self.history, "best_val_loss": self.best_val_loss,
                "best_epoch": self.best_epoch, "num_epochs": self.num_epochs}
        if self.scst is not None:
            loop["sample_rng"] = self.sample_rng.bit_generator.state
        return {"loop": loop, "optimizer": self._optimizer_state()}

    def load_training_state(self, state):
        """Continue from a `training_state()` (the model's weights are restored separately)."""
        loop = state["loop"]
        self.epoch, self.iteration, self.epoch_seconds = int(loop["epoch"]), int(loop["iteration"]), loop["epoch_seconds"]
        self.epoch_rng_state = loop["rng"]
        self.history = {k: list(v) for k, v in loop["history"].items()}
        self.best_val_loss, self.best_epoch = float(loop["best_val_loss"]), loop["best_epoch"]
        if self.scst is not None and "sample_rng" in loop:
            self.sample_rng.bit_generator.state = loop["sample_rng"]
        self._load_optimizer_state(state["optimizer"])

    def val_loss(self):
        """Teacher-forced loss over the fixed validation subset (mean over captions; rank 0's value
        on every rank)."""
        total = 0.0
        for start in range(0, len(self.val_rows), self.batch_size):
            rows = self.val_rows[start:start + self.batch_size]
            total += self._eval_loss(*self._batch("val", rows)) * len(rows)
        return self.dist.broadcast(total / max(len(self.val_rows), 1))

    def _shard(self, rows):
        """A step's caption rows -> this rank's rows and its weight (share of the step's captions).
        A rank left without rows trains on the first one with weight 0, so that every rank takes part."""
        B = self.batch_size
        mine = rows[self.dist.rank * B:(self.dist.rank + 1) * B]
        return (mine, len(mine) / len(rows)) if len(mine) else (rows[:1], 0.0)

    def _check_loss(self, loss, where):
        """Raise TrainingDiverged when a batch loss is non-finite or far above the run's first one."""
        first = self.history["loss"][0] if self.history["loss"] else loss
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the training loss became {loss} at {where}")
        if self.scst is None and loss > self.divergence_factor * abs(first):  # a self-critical loss may be ~0 or < 0
            raise TrainingDiverged(f"the training loss grew to {loss:.4g} at {where}, more than "
                                   f"{self.divergence_factor:g} times the first batch loss {first:.4g}")

    @contextlib.contextmanager
    def _clean_stops(self):
        """While training, SIGINT (Ctrl-C) and SIGTERM ask for a stop after the current step;
        a second one raises KeyboardInterrupt at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = signal.Signals(signum).name
            if self.verbose:
                print(f"\n{self.stop_requested}: stopping after the current step (again to stop at once)", flush=True)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def train(self):
        """Run the remaining epochs; returns the history dict (per-iteration `loss`, per-epoch
        `train_loss`, `val_loss`, `learning_rate`, `train_seconds` spent in training steps).

        On a requested stop (Ctrl-C, SIGTERM) it finishes the current step, calls save_state
        and returns early with `self.stop_requested` set. Raises TrainingDiverged.
        """
        num_train = self.data["train_captions"].shape[0]
        step_size = self.batch_size * self.dist.world_size  # captions per step, over all ranks
        iters = math.ceil(num_train / step_size)
        if self.max_iters is not None:
            iters = min(iters, self.max_iters)
        with self._clean_stops():
            while self.epoch < self.num_epochs:
                epoch = self.epoch + 1
                self.rng.bit_generator.state = self.epoch_rng_state
                order = self.rng.permutation(num_train)
                bar = tqdm(range(self.iteration, iters), desc=f"epoch {epoch}/{self.num_epochs}", leave=False,
                           disable=not self.verbose, mininterval=1.0, initial=self.iteration, total=iters)
                stop = False
                for it in bar:
                    if stop:
                        bar.close()
                        self._save_state()
                        return self.history
                    rows, weight = self._shard(order[it * step_size:(it + 1) * step_size])
                    start = time.perf_counter()
                    loss = self._train_step(*self._batch("train", rows), weight) if self.scst is None \
                        else self._scst_step(rows, weight)
                    # the step's loss and whether any rank was asked to stop, the same on every rank
                    loss, stop = self.dist.all_reduce_sum(np.array([loss * weight, bool(self.stop_requested)]))
                    loss, stop = float(loss), bool(stop)
                    self.stop_requested = self.stop_requested or ("a signal to another process" if stop else None)
                    self.epoch_seconds += time.perf_counter() - start
                    self._check_loss(loss, f"epoch {epoch}, iteration {it + 1}")
                    self.history["loss"].append(loss)
                    self.iteration = it + 1
                    bar.set_postfix(loss=f"{loss:.3f}", refresh=False,
                                    **({"reward": f"{self.history['reward'][-1]:.3f}"} if self.scst else {}))
                bar.close()
                self._end_epoch(epoch, iters)
                self._save_state()
                stop = self.dist.all_reduce_sum(np.array([bool(self.stop_requested)], dtype=np.float64))[0]
                if stop:
                    self.stop_requested = self.stop_requested or "a signal to another process"
                    return self.history
        return self.history

    def _scst_step(self, rows, weight):
        """One self-critical update on the images of the step's caption rows -> its loss (float).

        For each image, scst.num_samples captions are sampled; each is rewarded with its CIDEr-D
        against the image's references; the baseline is the greedy caption's reward or the mean
        reward of the image's other samples; the loss is sum_n (r_n - b_n) * cross-entropy of
        sampled caption n (including its <END>), averaged over the samples.
        """
        scst, model = self.scst, self.model
        images = np.unique(self.data["train_image_idxs"][rows])
        features = self.data["train_features"][images]
        K = scst.num_samples
        sampled = sample_search(model, features, scst.max_length, K, scst.temperature, self.sample_rng)  # (n K, L)
        rewards = scst.cider.scores(decode_captions(sampled, model.idx_to_word), np.repeat(images, K))
        if scst.baseline == "greedy":
            greedy = decode_captions(greedy_search(model, features, scst.max_length), model.idx_to_word)
            baseline = np.repeat(scst.cider.scores(greedy, images), K)
        else:  # the mean reward of the image's other samples
            per_image = rewards.reshape(-1, K)
            baseline = ((per_image.sum(axis=1, keepdims=True) - per_image) / (K - 1)).reshape(-1)
        captions = np.concatenate([np.full((len(sampled), 1), model.start_idx), sampled], axis=1)  # (n K, L + 1)
        loss = self._update(np.repeat(features, K, axis=0), captions, rewards - baseline, weight)
        reward, base = self.dist.all_reduce_sum(np.array([rewards.mean() * weight, baseline.mean() * weight]))
        self.history["reward"].append(float(reward))
        self.history["baseline"].append(float(base))
        return loss

    def _save_state(self):
        """Call save_state on rank 0."""
        if self.save_state is not None and self.dist.is_main:
            self.save_state(self)

    def _end_epoch(self, epoch, iters):
        """Validation, history, logging, callbacks and learning-rate decay after the last step of an epoch."""
        self.history["train_seconds"].append(self.epoch_seconds)
        self.history["train_loss"].append(float(np.mean(self.history["loss"][-iters:])))
        self.history["learning_rate"].append(self.learning_rate)
        val = self.val_loss()
        if not math.isfinite(val):
            raise TrainingDiverged(f"the validation loss became {val} after epoch {epoch}")
        self.history["val_loss"].append(val)
        is_best = val < self.best_val_loss
        if is_best:
            self.best_val_loss, self.best_epoch = val, epoch
        if self.verbose:
            print(f"epoch {epoch}/{self.num_epochs}  train loss {self.history['train_loss'][-1]:.4f}  "
                  f"val loss {val:.4f}  lr {self.learning_rate:.2e}" + ("  (best)" if is_best else ""), flush=True)
        if self.on_epoch_end is not None:
            self.on_epoch_end(self, epoch, is_best)
        self._decay_lr(self.lr_decay)
        self.epoch, self.iteration, self.epoch_seconds = epoch, 0, 0.0
        self.epoch_rng_state = self.rng.bit_generator.state
