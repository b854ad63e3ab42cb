"""The configuration of a training run, settled once before anything runs.

    settled = settle(argv)      # the flags, the recipe, a resumed run's values, the data's size
    settled.config              # a frozen RunConfig: every flag's value, saved with the run
    settled.lines               # what to print first (the recipe, notes), once, by rank 0
    settled.start               # the model to start from: the resumed or --init_from one, or None

Every flag of training.py is a row of FLAGS (core/training/flags.py: type, default, help, check,
whether a resumed run must keep it); RECIPES are the named sets of defaults. `settle` merges, in
this order and only here: the defaults, the recipe (named, implied by --scst, or chosen by the
data's size), the flags given, a resumed run's saved flags (and its data folder), the sizes of an
--init_from checkpoint, the default learning rate and checkpoint of the model type, the device, and
the per-process batch of a run resumed on another number of processes. Nothing changes the RunConfig afterwards.
"""
import dataclasses
import math
import os
from pathlib import Path

from core.data.coco_utils import count_training_captions, default_data_dir, load_vocab
from core.model.registry import BACKENDS, MODEL_TYPES, checkpoint_features
from core.training.flags import (  # noqa: F401  (the table, importable here)
    CAPABILITY_FLAGS, CROSS_ENTROPY_FLAGS, FLAG, FLAGS, GROUPS, RECIPES, SMALL_DATA, RunConfig,
    build_parser, saved_flags)
from core.util.cli import flag_error, resolve_device
from core.util.errors import UserError


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


