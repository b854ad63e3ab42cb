"""The one training loop shared by both captioning solvers.

A subclass says how one step computes the loss and updates the weights
(`_train_step`), how a batch is scored without training (`_eval_loss`) and how the
learning rate decays (`_decay_lr`); everything else (epochs over shuffled captions,
minibatches, validation on a fixed subset, history, logging, best-model callback)
lives here.
"""
import math
import time

import numpy as np
from tqdm import tqdm


class SolverBase:
    """data: a dict from `core.coco_utils.load_coco_data`.

    num_epochs, batch_size: one epoch visits every training caption once, in a fresh
    random order. lr_decay: learning rate multiplier after each epoch. val_samples:
    size of the fixed, seeded subset of validation captions scored after each epoch.
    on_epoch_end: optional callable(solver, epoch, is_best) called after each epoch,
    with is_best true when the validation loss is the lowest so far. max_iters: stop each
    epoch after this many minibatches (dry runs and timing; None: the whole epoch).
    """

    def __init__(self, model, data, *, num_epochs=10, batch_size=100, lr_decay=1.0, val_samples=1000,
                 seed=0, verbose=True, on_epoch_end=None, max_iters=None):
        self.model = model
        self.data = data
        self.num_epochs = num_epochs
        self.batch_size = batch_size
        self.lr_decay = lr_decay
        self.verbose = verbose
        self.on_epoch_end = on_epoch_end
        self.max_iters = max_iters
        self.rng = np.random.default_rng(seed)
        num_val = data["val_captions"].shape[0]
        self.val_rows = np.sort(self.rng.choice(num_val, size=min(val_samples, num_val), replace=False))
        self.history = {"loss": [], "train_loss": [], "val_loss": [], "learning_rate": [], "train_seconds": []}
        self.best_val_loss = math.inf
        self.best_epoch = None

    def _batch(self, split, rows):
        """rows (B,) caption indices -> features (B, D) float32, captions (B, L) int."""
        captions = self.data[f"{split}_captions"][rows]
        features = self.data[f"{split}_features"][self.data[f"{split}_image_idxs"][rows]]
        return features, captions

    def _train_step(self, features, captions):
        """One update on a minibatch -> its loss (float)."""
        raise NotImplementedError

    def _eval_loss(self, features, captions):
        """Loss of a minibatch without training (float)."""
        raise NotImplementedError

    def _decay_lr(self, factor):
        """Multiply the learning rate by factor."""
        raise NotImplementedError

    @property
    def learning_rate(self):
        """The current learning rate (float)."""
        raise NotImplementedError

    def val_loss(self):
        """Teacher-forced loss over the fixed validation subset (mean over captions)."""
        total = 0.0
        for start in range(0, len(self.val_rows), self.batch_size):
            rows = self.val_rows[start:start + self.batch_size]
            total += self._eval_loss(*self._batch("val", rows)) * len(rows)
        return total / max(len(self.val_rows), 1)

    def train(self):
        """Run all epochs; returns the history dict (per-iteration `loss`, per-epoch
        `train_loss`, `val_loss`, `learning_rate`, `train_seconds` spent in training steps)."""
        num_train = self.data["train_captions"].shape[0]
        iters = math.ceil(num_train / self.batch_size)
        if self.max_iters is not None:
            iters = min(iters, self.max_iters)
        for epoch in range(1, self.num_epochs + 1):
            order = self.rng.permutation(num_train)
            losses = []
            start = time.perf_counter()
            bar = tqdm(range(iters), desc=f"epoch {epoch}/{self.num_epochs}", leave=False,
                       disable=not self.verbose, mininterval=1.0)
            for it in bar:
                rows = order[it * self.batch_size:(it + 1) * self.batch_size]
                loss = self._train_step(*self._batch("train", rows))
                if not math.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss} at epoch {epoch}, iteration {it + 1}: "
                                             "lower the learning rate")
                losses.append(loss)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            self.history["train_seconds"].append(time.perf_counter() - start)
            self.history["loss"].extend(losses)
            self.history["train_loss"].append(float(np.mean(losses)))
            self.history["learning_rate"].append(self.learning_rate)
            val = self.val_loss()
            self.history["val_loss"].append(val)
            is_best = val < self.best_val_loss
            if is_best:
                self.best_val_loss, self.best_epoch = val, epoch
            if self.verbose:
                print(f"epoch {epoch}/{self.num_epochs}  train loss {self.history['train_loss'][-1]:.4f}  "
                      f"val loss {val:.4f}  lr {self.learning_rate:.2e}" + ("  (best)" if is_best else ""),
                      flush=True)
            if self.on_epoch_end is not None:
                self.on_epoch_end(self, epoch, is_best)
            self._decay_lr(self.lr_decay)
        return self.history
