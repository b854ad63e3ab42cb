"""What one training step does, for the shared loop of core/training/solver_base.py: cross-entropy
on the ground-truth captions, or self-critical training (Rennie et al., CVPR 2017) on sampled ones.

A step strategy says which items an epoch permutes (`num_items`: caption rows, or images),
computes one step on this process's items through the solver's public `batch` and `gradients`
(`step(solver, items, weight) -> StepResult`: loss, gradients and metrics, which the loop applies
and records; a strategy changes neither the weights nor the loop's state), and names the metrics
it returns (`history_keys`, whose epoch means the epoch line prints next to its `loss_name`), what
its items are (`unit`) and whether its loss is positive (`positive_loss`: then a loss far above
the first one counts as divergence).
"""
from dataclasses import dataclass, field

import numpy as np

from core.evaluation.cider import CiderD
from core.data.vocab import decode_captions
from core.model.decoding import draw_words, greedy_search, sample_search
from core.evaluation.metrics import references_by_image


@dataclass(frozen=True)
class StepResult:
    """What one step computed on this process: its loss (float), the gradients the solver's `apply`
    takes, and the values of the strategy's history_keys (this rank's means; the loop averages them
    over the ranks as it does the loss)."""

    loss: float
    gradients: object
    metrics: dict = field(default_factory=dict)


class CrossEntropy:
    """Teacher forcing: an epoch is one pass over the training captions. label_smoothing e: the
    targets are (1 - e) one-hot + e / V (0: plain cross-entropy). scheduled_sampling P
    (Bengio et al. 2015; the recurrent decoders): in epoch e (from 1) each input word after <START>
    is, with probability P * min(1, e / ramp), replaced by a word sampled from the model's
    distribution at the step before (a schedule of the epoch alone, as self-critical.pytorch's: a
    single epoch samples, and a run resumed with more epochs keeps it); two passes, as in parallel
    scheduled sampling: the teacher-forced pass gives the distributions, the second trains on the
    mixed inputs (targets unchanged). seed: with the epoch and the caption row it seeds each
    caption's draws, so they do not depend on the batch or the process."""

    history_keys = ()
    loss_name = "train loss"
    unit = "captions"
    positive_loss = True  # so a loss far above the first one means divergence

    def __init__(self, label_smoothing=0.0, scheduled_sampling=0.0, seed=0, ramp=5):
        self.label_smoothing, self.scheduled_sampling, self.seed = (label_smoothing,
                                                                    scheduled_sampling, seed)
        self.ramp = ramp

    def sampling_probability(self, epoch):
        """The probability that an input word is the model's own in epoch `epoch` (0-based)."""
        return self.scheduled_sampling * min(1.0, (epoch + 1) / self.ramp)

    def mixed_inputs(self, model, features, captions, rows, probability, epoch):
        """Scheduled sampling's inputs: captions (B, T + 1), rows (B,) their caption rows -> (B, T)
        the words fed in, each after <START> the model's sampled word with `probability`."""
        B, T = captions.shape[0], captions.shape[1] - 1
        draws = np.stack([np.random.default_rng([self.seed, epoch, int(r)]).random((2, T))
                          for r in rows])  # (B, 2, T): whether to replace, which word
        inputs = captions[:, :-1].copy()
        with model.decoding():  # the teacher-forced pass: the distribution before each word
            state = model.init_state(features)
            for t in range(T - 1):
                logprobs, state = model.step(captions[:, t], state)
                sampled = draw_words(logprobs, draws[:, 1, t])
                replace = (draws[:, 0, t] < probability) & (captions[:, t + 1] != model.null_idx)
                inputs[replace, t + 1] = sampled[replace]
        return inputs

    def num_items(self, data):
        """Caption rows in an epoch."""
        return data["train_captions"].shape[0]

    def step(self, solver, rows, weight):
        """The teacher-forced loss and gradients of the caption rows (B,) -> StepResult."""
        features, captions = solver.batch("train", rows)
        options = {"smoothing": self.label_smoothing} if self.label_smoothing else {}
        probability = self.sampling_probability(solver.epoch)
        if probability:
            options["inputs"] = self.mixed_inputs(solver.model, features, captions, rows,
                                                  probability, solver.epoch)
        return StepResult(*solver.gradients(features, captions, weight=weight, **options))


class SelfCritical:
    """Self-critical sequence training: an epoch is one pass over the training images.

    cider: a core.evaluation.cider.CiderD over the training references; num_samples K: captions
    sampled per image; baseline: "greedy" (the reward of the greedy caption) or "mean" (the mean
    reward of the image's other samples); temperature: of the sampling; max_length L: longest
    sampled caption; seed: with the epoch and the image index it seeds that image's draws, so the
    samples do not depend on which process or step an image falls in (K processes of batch B sample
    as one process of batch K*B; a resumed run draws what a straight run draws).

    Dropout is off both when the captions are sampled and when their loss is differentiated (the
    model's eval mode), so the log-probabilities trained are those the captions were drawn with.
    (self-critical.pytorch samples in training mode and differentiates that same forward pass;
    here sampling and the update are two passes, and two dropout draws would differ.)
    """

    history_keys = ("reward", "baseline")
    loss_name = "self-critical loss"
    unit = "images"
    positive_loss = False  # (r - b) * cross-entropy may be ~0 or negative

    def __init__(self, cider, num_samples=5, baseline="greedy", temperature=1.0, max_length=16,
                 seed=0):
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
        return np.concatenate([np.random.default_rng([self.seed, epoch, int(i)]).random((K, L))
                               for i in images])

    def step(self, solver, items, weight):
        """The self-critical loss and gradients of the images self.images[items] -> StepResult.

        For each image, K captions are sampled; each is rewarded with its CIDEr-D against the
        image's references; the loss is sum_n (r_n - b_n) * cross-entropy of sampled caption n
        (including its <END>), averaged over the n K samples.
        """
        model, K = solver.model, self.num_samples
        images = self.images[items]
        features = solver.features("train", images)
        sampled = sample_search(model, features, self.max_length, K, self.temperature,
                                draws=self.draws(images, solver.epoch))  # (n K, L)
        rewards = self.cider.scores(decode_captions(sampled, model.idx_to_word),
                                    np.repeat(images, K))
        if self.baseline == "greedy":
            greedy = decode_captions(greedy_search(model, features, self.max_length),
                                     model.idx_to_word)
            baseline = np.repeat(self.cider.scores(greedy, images), K)
        else:  # the mean reward of the image's other samples
            per_image = rewards.reshape(-1, K)
            baseline = ((per_image.sum(axis=1, keepdims=True) - per_image) / (K - 1)).reshape(-1)
        # (n K, L + 1)
        captions = np.concatenate([np.full((len(sampled), 1), model.start_idx), sampled], axis=1)
        repeated = features[np.repeat(np.arange(len(features)), K)]  # each image's row K times
        loss, gradients = solver.gradients(repeated, captions, rewards - baseline, weight,
                                           dropout=False)
        return StepResult(loss, gradients,
                          {"reward": float(rewards.mean()), "baseline": float(baseline.mean())})


def from_flags(args, model, data):
    """training.py's step strategy: cross-entropy, or (--scst) self-critical with the training
    references' CIDEr-D; max_length: the captions' length, or less for a model with a position
    limit."""
    if not args.scst:
        return CrossEntropy(args.label_smoothing, args.scheduled_sampling, seed=args.seed,
                            ramp=args.scheduled_sampling_ramp)
    T = data["train_captions"].shape[1] - 1  # words after <START>, <END> included
    refs = references_by_image(data["train_captions"], data["train_image_idxs"],
                               data["idx_to_word"])
    return SelfCritical(CiderD(refs), args.scst_samples, args.baseline, args.temperature,
                        max_length=min(T, model.max_length or T), seed=args.seed)
