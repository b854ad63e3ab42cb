"""What one training step does, for the shared loop of core/training/solver_base.py: cross-entropy on the
ground-truth captions, or self-critical training (Rennie et al., CVPR 2017) on sampled ones.

A step strategy says which items an epoch permutes (`num_items`: caption rows, or images), does
one update on this process's items (`step(solver, items, weight) -> loss`), and names the extra
per-iteration history it records (`history_keys`, whose epoch means the epoch line prints next to
its `loss_name`), what its items are (`unit`) and whether its loss is positive
(`positive_loss`: then a loss far above the first one counts as divergence).
"""
import numpy as np

from core.evaluation.cider import CiderD
from core.data.vocab import decode_captions
from core.model.decoding import greedy_search, sample_search
from core.evaluation.metrics import references_by_image


class CrossEntropy:
    """Teacher forcing: an epoch is one pass over the training captions."""

    history_keys = ()
    loss_name = "train loss"
    unit = "captions"
    positive_loss = True  # so a loss far above the first one means divergence

    def num_items(self, data):
        """Caption rows in an epoch."""
        return data["train_captions"].shape[0]

    def step(self, solver, rows, weight):
        """One update on the caption rows (B,) -> its loss (float)."""
        return solver._train_step(*solver._batch("train", rows), weight)


class SelfCritical:
    """Self-critical sequence training: an epoch is one pass over the training images.

    cider: a core.evaluation.cider.CiderD over the training references; num_samples K: captions sampled per
    image; baseline: "greedy" (the reward of the greedy caption) or "mean" (the mean reward of the
    image's other samples); temperature: of the sampling; max_length L: longest sampled caption;
    seed: with the epoch and the image index it seeds that image's draws, so the samples do not
    depend on which process or step an image falls in (K processes of batch B sample as one
    process of batch K*B; a resumed run draws what a straight run draws).
    """

    history_keys = ("reward", "baseline")
    loss_name = "self-critical loss"
    unit = "images"
    positive_loss = False  # (r - b) * cross-entropy may be ~0 or negative

    def __init__(self, cider, num_samples=5, baseline="greedy", temperature=1.0, max_length=16, seed=0):
        if baseline not in ("greedy", "mean"):
            raise ValueError(f'baseline must be "greedy" or "mean", got "{baseline}"')
        if baseline == "mean" and num_samples < 2:
            raise ValueError("the mean baseline needs at least 2 samples per image")
        self.cider, self.num_samples, self.baseline = cider, num_samples, baseline
        self.temperature, self.max_length, self.seed = temperature, max_length, seed
        self.images = None

    def num_items(self, data):
        """Distinct training images in an epoch."""
        self.images = np.unique(data["train_image_idxs"])
        return len(self.images)

    def draws(self, images, epoch):
        """The uniform draws of each image's K samples: images (n,) -> (n K, L) in [0, 1)."""
        K, L = self.num_samples, self.max_length
        return np.concatenate([np.random.default_rng([self.seed, epoch, int(i)]).random((K, L)) for i in images])

    def step(self, solver, items, weight):
        """One update on the images self.images[items] -> its loss (float).

        For each image, K captions are sampled; each is rewarded with its CIDEr-D against the
        image's references; the loss is sum_n (r_n - b_n) * cross-entropy of sampled caption n
        (including its <END>), averaged over the n K samples.
        """
        model, K = solver.model, self.num_samples
        images = self.images[items]
        features = solver.data["train_features"][images]
        sampled = sample_search(model, features, self.max_length, K, self.temperature,
                                draws=self.draws(images, solver.epoch))  # (n K, L)
        rewards = self.cider.scores(decode_captions(sampled, model.idx_to_word), np.repeat(images, K))
        if self.baseline == "greedy":
            greedy = decode_captions(greedy_search(model, features, self.max_length), model.idx_to_word)
            baseline = np.repeat(self.cider.scores(greedy, images), K)
        else:  # the mean reward of the image's other samples
            per_image = rewards.reshape(-1, K)
            baseline = ((per_image.sum(axis=1, keepdims=True) - per_image) / (K - 1)).reshape(-1)
        captions = np.concatenate([np.full((len(sampled), 1), model.start_idx), sampled], axis=1)  # (n K, L + 1)
        loss = solver._update(np.repeat(features, K, axis=0), captions, rewards - baseline, weight)
        reward, base = solver.dist.all_reduce_sum(np.array([rewards.mean() * weight, baseline.mean() * weight]))
        solver.history["reward"].append(float(reward))
        solver.history["baseline"].append(float(base))
        return loss


def from_flags(args, model, data):
    """training.py's step strategy: cross-entropy, or (--scst) self-critical with the training references'
    CIDEr-D; max_length: the captions' length, or less for a model with a position limit."""
    if not args.scst:
        return CrossEntropy()
    T = data["train_captions"].shape[1] - 1  # words after <START>, <END> included
    refs = references_by_image(data["train_captions"], data["train_image_idxs"], data["idx_to_word"])
    return SelfCritical(CiderD(refs), args.scst_samples, args.baseline, args.temperature,
                        max_length=min(T, model.max_length or T), seed=args.seed)
