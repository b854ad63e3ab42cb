"""The configuration of a training run, settled once before anything runs.

    settled = settle(argv)      # the flags, the recipe, a resumed run's values, the data's size
    settled.config              # a frozen RunConfig: every flag's value, saved with the run
    settled.lines               # what to print first (the recipe, notes), once, by rank 0
    settled.start               # the model to start from: the resumed or --init_from one, or None

Every flag of training.py is a row of FLAGS (type, default, help, check, whether a resumed run must
keep it); RECIPES are the named sets of defaults. `settle` merges, in this order and only here:
the defaults, the recipe (named, implied by --scst, or chosen by the data's size), the flags given,
a resumed run's saved flags (and its data folder), the sizes of an --init_from checkpoint, the
default learning rate and checkpoint of the model type, the device, and the per-process batch of
a run resumed on another number of processes. Nothing changes the RunConfig afterwards.
"""
import dataclasses
import math
import os
from pathlib import Path

from core.data.coco_utils import count_training_captions, default_data_dir, load_vocab
from core.data.feature_kinds import FEATURE_KINDS
from core.model.registry import BACKENDS, MODEL_TYPES, SIZE_FLAGS, checkpoint_features
from core.util.cli import Flag, flag_error, flag_parser, resolve_device
from core.util.errors import UserError


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
    Flag("threads", int, None, "CPU threads of numpy's BLAS and torch (unset: the libraries' "
         "default, one per core or OMP_NUM_THREADS; torchrun sets 1 per process). On a machine "
         "busy with other jobs pass fewer: on 2 cores with 2 other busy processes the LSTM trained "
         "1.7x faster with 1 than with 2, alone 1.6x slower", "positive", fixed=False),
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


@dataclasses.dataclass(frozen=True)
class Start:
    """Where a run starts from: model and its checkpoint's config (and, resuming, its
    TrainingState)."""

    path: str
    model: object
    checkpoint: dict
    state: object = None


@dataclasses.dataclass(frozen=True)
class Settled:
    """config: the RunConfig; lines: what the run prints first; start: a Start, or None for a new
    model."""

    config: object
    lines: tuple
    start: object


def choose_recipe(values, explicit, num_items):
    """-> (recipe name, why it was chosen or None). num_items: the training captions the run will
    see (the data's, or --num_samples of them; None when the data cannot be read yet)."""
    if values["recipe"] is not None:
        return values["recipe"], "--recipe"
    if values["scst"]:
        return "scst", "--scst"
    recipe_flags = {"epochs", "batch_size", "lr_decay"}
    if num_items is not None and num_items <= SMALL_DATA and not recipe_flags & explicit:
        if values["num_samples"] is not None and values["num_samples"] <= SMALL_DATA:
            return "small-data", (f"--num_samples {values['num_samples']} <= {SMALL_DATA} with no "
                                  "--epochs/--batch_size/--lr_decay; --recipe default turns it off")
        return "small-data", (f"the data has {num_items} training captions <= {SMALL_DATA}; "
                              "--recipe default turns it off")
    return "default", None


def _new_run(values, explicit, lines):
    """A new run's values: the data folder, the recipe for its size, --init_from's sizes, the model
    type's learning rate and checkpoint -> (values, recipe line, Start or None)."""
    if values["data_dir"] is None:
        values["data_dir"] = str(default_data_dir(log=lines.append))
    available = count_training_captions(values["data_dir"])
    num_items = min(values["num_samples"] or math.inf, available or math.inf)
    recipe, why = choose_recipe(values, explicit, None if num_items == math.inf else num_items)
    changed = {k: v for k, v in RECIPES[recipe].items() if k not in explicit}
    values.update(changed, recipe=recipe)
    line = (f"recipe {recipe}" + (f" ({why})" if why else "")
            + (": " + ", ".join(f"{k} {v:g}" for k, v in changed.items()) if changed else ""))
    start = None
    if values["init_from"]:
        from core.model.checkpoint import check_checkpoint, load_checkpoint  # torch: a file to read

        model, checkpoint = load_checkpoint(values["init_from"],
                                            vocabulary=lambda: load_vocab(values["data_dir"])[0],
                                            missing_hint="pass the checkpoint to fine-tune to "
                                                         "--init_from")
        # its sizes become the run's: first, it must be a model of the type asked for
        check_checkpoint(checkpoint, values["init_from"], values["model"],
                         checkpoint["idx_to_word"])
        sizes = {name: checkpoint[name] for name in MODEL_TYPES[values["model"]].size_flags}
        for name in explicit:
            if name in sizes and values[name] != sizes[name]:
                raise UserError(f"--{name} {values[name]} contradicts {values['init_from']}, "
                                f"whose model has {name} {sizes[name]}: leave it out to fine-tune "
                                f"it (the sizes are the checkpoint's)")
        values.update(sizes)
        if values["features"] is None:
            values["features"] = checkpoint_features(checkpoint)
        start = Start(values["init_from"], model, checkpoint)
    kind = MODEL_TYPES[values["model"]]
    if values["lr"] is None:
        values["lr"] = kind.default_lr
    if values["checkpoint"] is None and values["scst"]:  # next to the checkpoint it starts from
        start_file = Path(values["init_from"])
        values["checkpoint"] = str(start_file.with_name(f"{start_file.stem}_scst"
                                                        f"{BACKENDS[kind.backend].suffix}"))
    elif values["checkpoint"] is None:
        values["checkpoint"] = kind.checkpoint
    if num_items != math.inf and num_items < values["batch_size"]:
        lines.append(f"note: the {num_items} training captions are fewer than one batch of "
                     f"{values['batch_size']}: each epoch is a single step")
    return values, line, start


def _resumed_run(values, explicit, lines, world_size):
    """--resume PATH: its saved flags, with the ones given now that may change (epochs, paths,
    device, output) -> (values, recipe line, Start). UserError for a given flag that contradicts the
    run, a damaged file, or a run that has already trained its epochs and written its final files
    (one stopped after its last step resumes into writing them)."""
    from core.training.state import load_training_state  # torch, only for a file to load

    path = values["resume"]
    model, checkpoint, state = load_training_state(path)
    extra = checkpoint.get("extra", {})
    saved = extra.get("args")
    if not isinstance(saved, dict) or "data_path" not in extra:
        raise UserError(f"{path} was not written by training.py: cannot resume from it")
    for name in explicit:
        if FLAG[name].fixed and values[name] != saved.get(name):
            raise UserError(f"--{name} {values[name]} contradicts {path}, which was trained with "
                            f"--{name} {saved.get(name)}: leave it out to resume, or start a new "
                            f"run")
    merged = {**{f.name: f.default for f in FLAGS}, **{k: v for k, v in saved.items() if k in FLAG}}
    merged.update({name: values[name] for name in explicit}, resume=str(path))
    if "device" not in explicit:
        merged["device"] = None  # the machine of this run decides, as for a new run
    if "checkpoint" not in explicit:
        merged["checkpoint"] = str(Path(path).with_name(Path(saved["checkpoint"]).name))
    paths = extra.get("paths")
    # an out_dir inside the run's folder moves with a copied run
    if paths and "out_dir" not in explicit:
        was, now = Path(paths["checkpoint"]).parent, Path(path).resolve().parent
        try:
            merged["out_dir"] = str(now / Path(paths["out_dir"]).relative_to(was))
        except ValueError:  # an out_dir outside the run's folder stays where it was
            merged["out_dir"] = paths["out_dir"]
    if "data_dir" not in explicit:
        merged["data_dir"] = extra["data_path"]
    if state.epoch >= merged["epochs"] and not state.iteration:
        final = Path(merged["checkpoint"])
        history = Path(merged["out_dir"]) / f"{final.stem}_history.json"
        if final.is_file() and history.is_file():
            raise UserError(f"{path} has already trained {state.epoch} of its {merged['epochs']} "
                            f"epochs: pass --epochs larger than {state.epoch} to train more")
        # stopped after its last step, before the final files were written: resuming writes them
        lines.append(f"{path} has trained all its {state.epoch} epochs, but {final} or {history} "
                     f"is missing (the run stopped before writing them): writing its final files")
    unit = "images" if merged["scst"] else "captions"
    given = values["batch_size"] if "batch_size" in explicit else None
    merged["batch_size"], note = resumed_batch_size(saved["batch_size"], state.world_size,
                                                    world_size, given, unit)
    if note:
        lines.append(note)
    return merged, f"recipe {merged['recipe'] or 'default'} (as {Path(path).name} was trained)", \
        Start(str(path), model, checkpoint, state)


def _check_saved(values, path):
    """UserError when a resumed file's saved flags are not a run training.py could have started."""
    if values.get("model") not in MODEL_TYPES:
        raise UserError(f"{path} holds a damaged training state (its model {values.get('model')!r} "
                        f"is not one of {', '.join(MODEL_TYPES)}): not resumed; use an intact "
                        f"*_last file or start a new run")
    for f in FLAGS:
        if f.type in (int, float) and values[f.name] is not None and (
                isinstance(values[f.name], bool) or not isinstance(values[f.name], (int, float))):
            problem = f"--{f.name} must be a number, got {values[f.name]!r}"
        else:
            problem = flag_error(f, values[f.name])
        if problem:
            raise UserError(f"{path} holds a damaged training state (its {problem}): not resumed; "
                            f"use an intact *_last file or start a new run")


def settle(argv=None, world_size=None):
    """training.py's flags -> Settled (the frozen RunConfig, the lines to print first, the Start).

    world_size: processes of this run (default: torchrun's WORLD_SIZE, else 1). Exits with a
    one-line flag error (code 2) for a bad flag; UserError for a file that cannot be resumed or
    fine-tuned from."""
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    explicit = set(given)
    values = {**{f.name: f.default for f in FLAGS}, **given}
    for name in given:
        problem = flag_error(FLAG[name], values[name])
        if problem:
            parser.error(problem)
    if values["model"] is None and values["resume"] is None:
        parser.error("--model is required (or --resume PATH)")
    if values["resume"] is None and values["scst"] != (values["init_from"] is not None):
        parser.error("--scst needs --init_from CHECKPOINT (and --init_from is for --scst)")
    for name in CAPABILITY_FLAGS:  # a training option some decoders' rows do not list
        if values[name] and values["model"] and name not in MODEL_TYPES[values["model"]].capabilities:
            parser.error(f"--{name} is for the decoders that can use it ("
                         f"{', '.join(m for m, t in MODEL_TYPES.items() if name in t.capabilities)})"
                         f", not {values['model']}")
    if values["scst"]:
        for name in CROSS_ENTROPY_FLAGS:
            if values[name]:
                parser.error(f"--{name} is a cross-entropy option: self-critical training (--scst) "
                             "would ignore it")
    if values["scst"] and values["baseline"] == "mean" and values["scst_samples"] < 2:
        parser.error("--baseline mean needs --scst_samples of at least 2 (the mean of an image's "
                     "other samples)")
    lines = []
    if values["resume"] is not None:
        world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
        values, recipe_line, start = _resumed_run(values, explicit, lines, world_size)
        _check_saved(values, values["resume"])
    else:
        values, recipe_line, start = _new_run(values, explicit, lines)
    kinds = MODEL_TYPES[values["model"]].feature_kinds
    if values["features"] is None:
        values["features"] = kinds[0]
    elif values["features"] not in kinds:
        raise UserError(f"--features {values['features']}: a {values['model']} reads "
                        f"{' or '.join(kinds)} features")
    uses_torch = MODEL_TYPES[values["model"]].uses_torch
    values["device"] = resolve_device(values["device"]) if uses_torch else "cpu"
    config = RunConfig(**values, explicit=tuple(sorted(explicit)), recipe_line=recipe_line)
    return Settled(config, (recipe_line, *lines), start)


def resumed_batch_size(saved_batch, saved_world, world, given=None, unit="captions"):
    """The per-process batch of a run resumed on `world` processes that was saved with `saved_batch`
    per process on `saved_world`: the one that keeps its items per step, so that the resumed run
    trains as a straight one would -> (batch_size, a line saying how it maps or None).
    given: --batch_size given now (it must agree). UserError when no whole batch keeps the step."""
    per_step = saved_batch * saved_world
    fits = [k for k in range(1, per_step + 1) if per_step % k == 0]
    if per_step % world:
        raise UserError(f"the run was saved with {per_step} {unit} per step ({saved_world} "
                        f"process(es) x batch {saved_batch}), which {world} processes cannot share "
                        f"evenly: resume it on "
                        f"{' or '.join(map(str, [k for k in fits if k <= 64][:8]))} processes")
    batch = per_step // world
    if given is not None and given != batch:
        raise UserError(f"--batch_size {given} contradicts the run's {per_step} {unit} per step "
                        f"({saved_world} process(es) x batch {saved_batch}): on {world} "
                        f"process(es) its batch is {batch}; leave "
                        "--batch_size out to resume, or start a new run")
    if world == saved_world:
        return batch, None
    return batch, (f"resuming a run of {saved_world} process(es) x batch {saved_batch} on {world} "
                   f"process(es): batch {batch} per process, the same {per_step} {unit} per step")


