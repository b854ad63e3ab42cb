"""training.py's flag table: every flag is a row of FLAGS (type, default, help, check, whether a
resumed run must keep it), in --help's GROUPS; RECIPES are the named sets of defaults; RunConfig is
the frozen record of a run's settled flags (core/training/config.py settles them). Reading it
imports no torch (--help is instant).
"""
import dataclasses

from core.data.feature_kinds import FEATURE_KINDS
from core.model.registry import MODEL_TYPES, SIZE_FLAGS
from core.util.cli import THREADS_HELP, Flag, flag_parser

SMALL_DATA = 1000  # the small-data recipe is chosen for --num_samples up to this
RECIPES = {
    "default": {},
    # the original repository's small-subset overfitting: long, undecayed, no dropout
    "small-data": {"epochs": 100, "batch_size": 50, "lr_decay": 1.0, "val_samples": 100,
                   "dropout": 0.0},
    # self-critical fine-tuning: a small step from a trained checkpoint, scored every pass over the
    # images
    "scst": {"lr": 5e-5, "lr_decay": 0.99, "eval_every": 1},
}

FLAGS = (
    Flag("model", str, None, "decoder to train (required unless --resume)",
         choices=tuple(MODEL_TYPES)),
    Flag("resume", str, None,
         "continue the run saved in PATH (the *_last checkpoint written after every epoch and "
         "on Ctrl-C); its flags are read from it, --epochs may be raised, flags that contradict it "
         "are an error",
         fixed=False, metavar="PATH"),
    Flag("features", str, None, "the kind of features the decoder reads: a region decoder's grid "
         "(VGG16's 7 x 7 cells, features_extraction.py --grid) or boxes (object regions, "
         "features_extraction.py --boxes: bottom-up attention); unset: " + ", ".join(
             f"{m} {t.features}" for m, t in MODEL_TYPES.items() if len(t.feature_kinds) > 1)
         + ", the others fc7 (an --init_from checkpoint's own)",
         choices=tuple(FEATURE_KINDS)),
    Flag("recipe", str, None, "named defaults (given flags win): " + "; ".join(
        f"{name}: {', '.join(f'{k} {v:g}' for k, v in values.items()) or 'the defaults shown here'}"
        for name, values in RECIPES.items())
         + f". Unset: scst with --scst, small-data when --num_samples is at "
        f"most {SMALL_DATA} and none of --epochs/--batch_size/--lr_decay is given, else default",
         choices=tuple(RECIPES)),
    Flag("data_dir", str, None,
         "dataset directory in the CS231n COCO layout (unset: core/datasets/coco_captioning "
         "when downloaded, else the bundled core/datasets/sample_captioning)", fixed=False),
    Flag("num_samples", int, None,
         "train on a seeded random subset of this many captions (unset: all)", "positive"),
    Flag("epochs", int, 10,
         "passes over the training captions (with --scst: over the training images)", "positive",
         fixed=False),
    Flag("batch_size", int, 100,
         "captions (with --scst: images) per step and process; a resumed run keeps its "
         "batch x processes per step, whatever the number of processes", "positive", fixed=False),
    Flag("lr", float, None, "learning rate (unset: " + ", ".join(
        f"{t.default_lr:g} for {m}" for m, t in MODEL_TYPES.items()) + ")", "positive"),
    Flag("lr_decay", float, 0.95, "learning rate multiplier after each epoch", "positive"),
    Flag("grad_clip", float, None, "clip the gradients to this global L2 norm before each update "
         "(by norm, as torch's clip_grad_norm_; self-critical.pytorch's grad_clip clips by value; "
         "unset: off)", "positive"),
    Flag("weight_decay", float, 0.0, "L2 weight decay on every weight, added to the gradient "
         "(as torch.optim.Adam's weight_decay)", "nonnegative"),
    Flag("label_smoothing", float, 0.0, "cross-entropy against (1 - e) one-hot + e / V targets, "
         "as torch's label_smoothing (cross-entropy steps only; the val loss stays plain)",
         "fraction"),
    Flag("scheduled_sampling", float, 0.0, "the recurrent decoders' scheduled sampling: the "
         "probability that an input word is the model's own sampled word rises by this / "
         "--scheduled_sampling_ramp each epoch to this, whatever --epochs (0: off)", "fraction"),
    Flag("scheduled_sampling_ramp", int, 5, "the epochs over which --scheduled_sampling's "
         "probability rises to its value (its epoch e, from 1: value * min(1, e / ramp))",
         "positive"),
    Flag("warmup", int, 0, "the learning rate rises linearly over this many first steps (0: off)",
         "nonnegative"),
    Flag("patience", int, 0, "stop early when this many epochs (scored epochs with --eval_every) "
         "pass without a better validation score (CIDEr with --eval_every, else the val loss); "
         "0: off", "nonnegative", fixed=False),
    Flag("update_rule", str, "adam",
         "update rule of the numpy models (the torch ones use torch Adam)",
         choices=("sgd", "sgd_momentum", "rmsprop", "adam")),
    *(Flag(name, size.type, size.default, size.help, size.check)
      for name, size in SIZE_FLAGS.items()),
    Flag("val_samples", int, 1000,
         "size of the fixed validation subset whose loss is reported each epoch", "positive"),
    Flag("eval_every", int, 0,
         "every this many epochs, score BLEU-4/CIDEr on --eval_images validation images and "
         "keep the best checkpoint by CIDEr (the last epoch is scored too, and chooses only when "
         "no multiple was; 0: off, the best is then by validation loss)", "nonnegative"),
    Flag("eval_images", int, 500, "validation images scored by --eval_every", "positive"),
    Flag("divergence_factor", float, 10.0,
         "stop with an error when a batch loss is NaN/inf or more than this many "
         "times the run's first batch loss, or the validation loss is NaN/inf (the last good files "
         "are kept)",
         "positive"),
    Flag("seed", int, 231, "seed of the data subset, initialisation, shuffling and sampling",
         "nonnegative"),
    Flag("checkpoint", str, None, "where to save the model (unset: " + ", ".join(
        t.checkpoint for t in MODEL_TYPES.values())
         + "; with --scst: the --init_from file's name with _scst, next to it, so that runs from "
         "different starting checkpoints keep their own files); *_best and the resumable *_last "
         "go next to it", fixed=False),
    Flag("out_dir", str, "outputs", "directory of the loss plot and history", fixed=False),
    Flag("device", str, None,
         "device of the torch models: cpu or cuda (unset: cuda when available)", fixed=False),
    Flag("amp", bool, False, "bfloat16 mixed precision for the torch models on CUDA", fixed=False),
    Flag("threads", int, None, THREADS_HELP, "positive", fixed=False),
    Flag("max_iters", int, None,
         "stop each epoch after this many steps (dry runs and timing; unset: whole epochs)",
         "positive"),
    Flag("quiet", bool, False, "no progress bars or per-epoch lines", fixed=False),
    Flag("tensorboard", str, None,
         "also log scalars per iteration and per epoch to this TensorBoard folder (needs "
         "the tensorboard package; the JSON history is written either way)", fixed=False,
         metavar="DIR"),
    Flag("scst", bool, False,
         "self-critical sequence training: fine-tune the --init_from checkpoint by REINFORCE "
         "with CIDEr-D (the training references' document frequencies) as the reward (recipe "
         "scst)"),
    Flag("init_from", str, None, "the cross-entropy-trained checkpoint --scst starts from",
         metavar="CHECKPOINT"),
    Flag("scst_samples", int, 5, "captions sampled per image by --scst", "positive"),
    Flag("baseline", str, "greedy",
         "--scst baseline: the greedy caption's reward, or the mean reward of the "
         "image's other samples", choices=("greedy", "mean")),
    Flag("temperature", float, 1.0, "sampling temperature of --scst", "nonnegative"),
)
FLAG = {f.name: f for f in FLAGS}
CAPABILITY_FLAGS = ("scheduled_sampling",)  # given only to a decoder whose row lists them
CROSS_ENTROPY_FLAGS = ("label_smoothing", "scheduled_sampling")  # what --scst's steps do not use
GROUPS = {  # --help lists the flags in these groups, in this order; every flag is in one
    "what to train": ("model", "resume", "recipe", "seed"),
    "model sizes": tuple(SIZE_FLAGS),
    "data": ("data_dir", "features", "num_samples"),
    "optimisation": ("epochs", "batch_size", "lr", "lr_decay", "update_rule", "grad_clip",
                     "weight_decay", "label_smoothing", "scheduled_sampling",
                     "scheduled_sampling_ramp", "warmup",
                     "divergence_factor", "max_iters"),
    "validation and the best checkpoint": ("val_samples", "eval_every", "eval_images", "patience"),
    "self-critical training (--scst)": ("scst", "init_from", "scst_samples", "baseline",
                                        "temperature"),
    "outputs": ("checkpoint", "out_dir", "tensorboard", "quiet"),
    "machine and processes (torchrun --nproc_per_node K training.py ...: --batch_size is per "
    "process)": ("device", "amp", "threads"),
}


def build_parser():
    """The argument parser; its namespace holds only the flags given (defaults are merged in
    `settle`)."""
    return flag_parser("training.py", "Train a captioning decoder on precomputed image features.",
                       GROUPS, FLAG, given_only=True)


RunConfig = dataclasses.make_dataclass(
    "RunConfig", [(f.name, object) for f in FLAGS] + [("explicit", tuple), ("recipe_line", str)],
    frozen=True)
RunConfig.__doc__ = ("The settled flags of a training run (frozen): one attribute per row of "
                     "FLAGS, `explicit` (the flags given) and `recipe_line` (the recipe in force, "
                     "as printed).")


def saved_flags(config):
    """The flags to record in the checkpoints of a run (what --resume reads back)."""
    return {f.name: getattr(config, f.name) for f in FLAGS}
