"""The configuration of a training run: every flag of training.py in one table (type, default, help,
check, whether it is fixed on resume), the named recipes that change defaults, and the merge of a
resumed run's saved flags with the ones given now.

    args = parse_args(argv)          # argparse Namespace with every flag set, args.explicit, args.recipe
    args, model, config, state = load_resume(args)   # --resume PATH: its flags merged with the given ones
"""
import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from core.model.checkpoint import load_training_state
from core.util.cli import ArgumentParser
from core.util.errors import UserError
from core.model.registry import MODEL_TYPES, SIZE_FLAGS


@dataclass(frozen=True)
class Flag:
    """One training.py flag. check: "positive", "positive_finite", "fraction" ([0, 1)), "nonnegative"
    or None; fixed: a resumed run must keep the value it was trained with."""

    name: str
    type: object
    default: object
    help: str
    check: str = None
    fixed: bool = True
    choices: tuple = None
    metavar: str = None


SMALL_DATA = 1000  # the small-data recipe is chosen for --num_samples up to this
RECIPES = {
    "default": {},
    # the original repository's small-subset overfitting: long, undecayed, no dropout
    "small-data": {"epochs": 100, "batch_size": 50, "lr_decay": 1.0, "val_samples": 100, "dropout": 0.0},
    # self-critical fine-tuning: a small step from a trained checkpoint, scored every pass over the images
    "scst": {"lr": 5e-5, "lr_decay": 0.99, "eval_every": 1},
}

FLAGS = (
    Flag("model", str, None, "decoder to train (required unless --resume)", choices=tuple(MODEL_TYPES)),
    Flag("resume", str, None, "continue the run saved in PATH (the *_last checkpoint written after every epoch and "
         "on Ctrl-C); its flags are read from it, --epochs may be raised, flags that contradict it are an error",
         fixed=False, metavar="PATH"),
    Flag("recipe", str, None, "named defaults (given flags win): " + "; ".join(
        f"{name}: {', '.join(f'{k} {v:g}' for k, v in values.items()) or 'the defaults shown here'}"
        for name, values in RECIPES.items()) + f". Unset: scst with --scst, small-data when --num_samples is at "
        f"most {SMALL_DATA} and none of --epochs/--batch_size/--lr_decay is given, else default",
         choices=tuple(RECIPES)),
    Flag("data_dir", str, None, "dataset directory in the CS231n COCO layout (unset: core/datasets/coco_captioning "
         "when downloaded, else the bundled core/datasets/sample_captioning)", fixed=False),
    Flag("num_samples", int, None, "train on a seeded random subset of this many captions (unset: all)", "positive"),
    Flag("epochs", int, 10, "passes over the training captions (with --scst: over the training images)", "positive",
         fixed=False),
    Flag("batch_size", int, 100, "captions (with --scst: images) per step and process; a resumed run keeps its "
         "batch x processes per step, whatever the number of processes", "positive", fixed=False),
    Flag("lr", float, None, "learning rate (unset: " + ", ".join(
        f"{t.default_lr:g} for {m}" for m, t in MODEL_TYPES.items()) + ")", "positive_finite"),
    Flag("lr_decay", float, 0.95, "learning rate multiplier after each epoch", "positive_finite"),
    Flag("update_rule", str, "adam", "update rule of the numpy models (the torch ones use torch Adam)",
         choices=("sgd", "sgd_momentum", "rmsprop", "adam")),
    *(Flag(name, size.type, size.default, size.help, size.check)
      for name, size in SIZE_FLAGS.items()),
    Flag("val_samples", int, 1000, "size of the fixed validation subset whose loss is reported each epoch",
         "positive"),
    Flag("eval_every", int, 0, "every this many epochs, score BLEU-4/CIDEr on --eval_images validation images and "
         "keep the best checkpoint by CIDEr (the last epoch is scored too, and chooses only when no multiple was; "
         "0: off, the best is then by validation loss)", "nonnegative"),
    Flag("eval_images", int, 500, "validation images scored by --eval_every", "positive"),
    Flag("divergence_factor", float, 10.0, "stop with an error when a batch loss is NaN/inf or more than this many "
         "times the run's first batch loss, or the validation loss is NaN/inf (the last good files are kept)",
         "positive_finite"),
    Flag("seed", int, 231, "seed of the data subset, initialisation, shuffling and sampling"),
    Flag("checkpoint", str, None, "where to save the model (unset: " + ", ".join(
        t.checkpoint for t in MODEL_TYPES.values()) + ", with _scst before the suffix for --scst); *_best and the "
         "resumable *_last go next to it", fixed=False),
    Flag("out_dir", str, "outputs", "directory of the loss plot and history", fixed=False),
    Flag("device", str, None, "device of the torch models: cpu or cuda (unset: cuda when available)", fixed=False),
    Flag("amp", bool, False, "bfloat16 mixed precision for the torch models on CUDA", fixed=False),
    Flag("max_iters", int, None, "stop each epoch after this many steps (dry runs and timing; unset: whole epochs)",
         "positive"),
    Flag("quiet", bool, False, "no progress bars or per-epoch lines", fixed=False),
    Flag("tensorboard", str, None, "also log scalars per iteration and per epoch to this TensorBoard folder (needs "
         "the tensorboard package; the JSON history is written either way)", fixed=False, metavar="DIR"),
    Flag("scst", bool, False, "self-critical sequence training: fine-tune the --init_from checkpoint by REINFORCE "
         "with CIDEr-D (the training references' document frequencies) as the reward (recipe scst)"),
    Flag("init_from", str, None, "the cross-entropy-trained checkpoint --scst starts from", metavar="CHECKPOINT"),
    Flag("scst_samples", int, 5, "captions sampled per image by --scst", "positive"),
    Flag("baseline", str, "greedy", "--scst baseline: the greedy caption's reward, or the mean reward of the "
         "image's other samples", choices=("greedy", "mean")),
    Flag("temperature", float, 1.0, "sampling temperature of --scst", "nonnegative"),
)
FLAG = {f.name: f for f in FLAGS}


def _default_text(flag):
    return "" if flag.default is None or flag.default is False else f" (default: {flag.default})"


def build_parser():
    """The argument parser; every default is applied after parsing, so that the namespace it returns
    holds only the flags given (see parse_args)."""
    p = ArgumentParser(prog="training.py", description="Train a captioning decoder on precomputed image features.",
                       argument_default=argparse.SUPPRESS)
    for f in FLAGS:
        text = f.help + _default_text(f)
        if f.type is bool:
            p.add_argument(f"--{f.name}", action="store_true", help=text)
        else:
            p.add_argument(f"--{f.name}", type=f.type, choices=f.choices, metavar=f.metavar, help=text)
    return p


def _check(parser, args):
    for f in FLAGS:
        value = getattr(args, f.name)
        if value is None or f.check is None:
            continue
        bad = {"positive": lambda v: v <= 0, "nonnegative": lambda v: v < 0, "fraction": lambda v: not 0 <= v < 1,
               "positive_finite": lambda v: not (math.isfinite(v) and v > 0)}[f.check](value)
        if bad:
            parser.error(f"--{f.name} must be {f.check.replace('_', ' and ').replace('fraction', 'in [0, 1)')}, "
                         f"got {value}")
    if args.scst and args.baseline == "mean" and args.scst_samples < 2:
        parser.error("--baseline mean needs --scst_samples of at least 2 (the mean of an image's other samples)")


def parse_args(argv=None):
    """training.py's flags -> Namespace with every flag, `explicit` (the names given) and `recipe`."""
    parser = build_parser()
    given = parser.parse_args(argv)
    explicit = sorted(vars(given))
    args = argparse.Namespace(**{**{f.name: f.default for f in FLAGS}, **vars(given)})
    args.explicit = explicit
    if args.model is None and args.resume is None:
        parser.error("--model is required (or --resume PATH)")
    _check(parser, args)
    if args.resume is None and args.scst != (args.init_from is not None):
        parser.error("--scst needs --init_from CHECKPOINT (and --init_from is for --scst)")
    if args.resume is None:
        apply_recipe(args)
    return args


def choose_recipe(args):
    """-> (recipe name, why it was chosen)."""
    if args.recipe is not None:
        return args.recipe, "--recipe"
    if args.scst:
        return "scst", "--scst"
    if (args.num_samples is not None and args.num_samples <= SMALL_DATA
            and not {"epochs", "batch_size", "lr_decay"} & set(args.explicit)):
        return "small-data", (f"--num_samples {args.num_samples} <= {SMALL_DATA} with no --epochs/--batch_size/"
                              "--lr_decay; --recipe default turns it off")
    return "default", None


def apply_recipe(args):
    """Set the recipe's values for the flags not given, then the model type's own defaults; records
    args.recipe and args.recipe_line (what the run prints first)."""
    args.recipe, why = choose_recipe(args)
    changed = {k: v for k, v in RECIPES[args.recipe].items() if k not in args.explicit}
    for name, value in changed.items():
        setattr(args, name, value)
    kind = MODEL_TYPES[args.model]
    if args.lr is None:
        args.lr = kind.default_lr
    if args.checkpoint is None:
        default = Path(kind.checkpoint)
        scst_name = default.with_name(f"{default.stem}_scst{default.suffix}")
        args.checkpoint = str(scst_name) if args.scst else kind.checkpoint
    values = ", ".join(f"{k} {v:g}" for k, v in changed.items())
    args.recipe_line = f"recipe {args.recipe}" + (f" ({why})" if why else "") + (f": {values}" if values else "")


def recipe_for_data(args, num_items):
    """After loading: a new run on at most SMALL_DATA captions with the default recipe chosen by itself
    (no --recipe, no --epochs/--batch_size/--lr_decay) takes the small-data recipe as --num_samples
    would -> the lines to print (the recipe, and a note when the data is smaller than one batch)."""
    lines = []
    auto = args.recipe == "default" and "recipe" not in args.explicit and args.resume is None
    if auto and num_items <= SMALL_DATA and not {"epochs", "batch_size", "lr_decay"} & set(args.explicit):
        changed = {k: v for k, v in RECIPES["small-data"].items() if k not in args.explicit}
        for name, value in changed.items():
            setattr(args, name, value)
        args.recipe = "small-data"
        args.recipe_line = (f"recipe small-data (the data has {num_items} training captions <= {SMALL_DATA}; --recipe "
                            "default turns it off): " + ", ".join(f"{k} {v:g}" for k, v in changed.items()))
        lines.append(args.recipe_line)
    if num_items < args.batch_size:
        lines.append(f"note: the {num_items} training captions are fewer than one batch of {args.batch_size}: "
                     "each epoch is a single step")
    return lines


def resumed_args(args, saved, path, paths=None):
    """The flags `saved` with a resumed run (as training.py recorded them) merged with the ones given
    now that may change (epochs, paths, device, output); UserError for a given flag that contradicts it.
    paths: the absolute checkpoint and out_dir the run wrote ({"checkpoint", "out_dir"}); when the file
    has moved (a copied run folder), an out_dir inside the old checkpoint's folder moves with it."""
    for name in args.explicit:
        if FLAG[name].fixed and getattr(args, name) != saved.get(name):
            raise UserError(f"--{name} {getattr(args, name)} contradicts {path}, which was trained with "
                            f"--{name} {saved.get(name)}: leave it out to resume, or start a new run")
    merged = argparse.Namespace(**{**{f.name: f.default for f in FLAGS}, **saved})
    for name in args.explicit:
        setattr(merged, name, getattr(args, name))
    merged.resume, merged.explicit = str(path), args.explicit
    merged.recipe_line = f"recipe {merged.recipe or 'default'} (as {Path(path).name} was trained)"
    if "device" not in args.explicit:
        merged.device = None  # the machine of this run decides, as for a new run
    if "checkpoint" not in args.explicit:
        merged.checkpoint = str(Path(path).with_name(Path(saved["checkpoint"]).name))
    if paths and "out_dir" not in args.explicit:
        was, now = Path(paths["checkpoint"]).parent, Path(path).resolve().parent
        try:
            merged.out_dir = str(now / Path(paths["out_dir"]).relative_to(was))
        except ValueError:  # an out_dir outside the run's folder stays where it was
            merged.out_dir = paths["out_dir"]
    return merged


def saved_flags(args):
    """The flags to record in the checkpoints of a run (what --resume reads back)."""
    return {f.name: getattr(args, f.name) for f in FLAGS}


def resumed_batch_size(saved_batch, saved_world, world, given=None, unit="captions"):
    """The per-process batch of a run resumed on `world` processes that was saved with `saved_batch`
    per process on `saved_world`: the one that keeps its items per step, so that the resumed run
    trains as a straight one would -> (batch_size, a line saying how it maps or None).
    given: --batch_size given now (it must agree). UserError when no whole batch keeps the step."""
    per_step = saved_batch * saved_world
    fits = [k for k in range(1, per_step + 1) if per_step % k == 0]
    if per_step % world:
        raise UserError(f"the run was saved with {per_step} {unit} per step ({saved_world} process(es) x batch "
                        f"{saved_batch}), which {world} processes cannot share evenly: resume it on "
                        f"{' or '.join(map(str, [k for k in fits if k <= 64][:8]))} processes")
    batch = per_step // world
    if given is not None and given != batch:
        raise UserError(f"--batch_size {given} contradicts the run's {per_step} {unit} per step ({saved_world} "
                        f"process(es) x batch {saved_batch}): on {world} process(es) its batch is {batch}; leave "
                        "--batch_size out to resume, or start a new run")
    if world == saved_world:
        return batch, None
    return batch, (f"resuming a run of {saved_world} process(es) x batch {saved_batch} on {world} process(es): "
                   f"batch {batch} per process, the same {per_step} {unit} per step")


def load_resume(args):
    """--resume: the saved run's flags merged with the given ones, its model, config and training state."""
    model, config, state = load_training_state(args.resume)
    saved = config.get("extra", {}).get("args")
    if saved is None:
        raise UserError(f"{args.resume} was not written by training.py: cannot resume from it")
    merged = resumed_args(args, saved, args.resume, config["extra"].get("paths"))
    if "data_dir" not in args.explicit:
        merged.data_dir = config["extra"]["data_path"]
    done = state["loop"]["epoch"]
    if merged.epochs <= done and not state["loop"]["iteration"]:
        raise UserError(f"{args.resume} has already trained {done} of its {merged.epochs} epochs: "
                        f"pass --epochs larger than {done} to train more")
    return merged, model, config, state
