"""A training run as training.py starts it, once its settings are settled: the data, the model
checked against it, the solver with its step strategy, the loop, and the final files. Split from
the script so that `training.py --help` and its flag errors import none of it (torch included).

    code = run(settled)   # settled: core.training.config.settle(argv) -> exit code (0, or 130)
"""
import contextlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from core.data.coco_utils import describe_features, keep_captions, load_coco_data
from core.data.feature_kinds import FEATURE_KINDS
from core.evaluation.plots import save_loss_plot, save_scst_plot
from core.model.checkpoint import check_against_data, save_checkpoint, save_training_state
from core.model.registry import MODEL_TYPES, build_model
from core.training.best import BestCheckpoint
from core.training.config import saved_flags
from core.training.solver_base import TrainingDiverged
from core.training.steps import from_flags
from core.training.tensorboard_log import epoch_callbacks
from core.util import distributed
from core.util.cli import (
    best_checkpoint_path, choose_threads, is_main_process, last_checkpoint_path, limit_threads)
from core.util.errors import UserError
from core.util.fileio import RunLock, atomic_write_text, check_owner, check_writable
from core.util.memory import keep_freed_memory


def starting_model(config, start, data):
    """The model to train: the resumed or --init_from one (checked against the data), or a new
    one."""
    if start is None:
        return build_model(config.model, data, saved_flags(config), seed=config.seed)
    check_against_data(start.checkpoint, start.path, config.model, data["idx_to_word"],
                       data["dataset_id"], config.data_dir,
                       FEATURE_KINDS[data["features_kind"]].feature_size(data["train_features"]),
                       sizes=FEATURE_KINDS[data["features_kind"]].model_sizes(
                           data["train_features"]), encoder=data["encoder"],
                       regions=data["regions"])
    return start.model


def set_up(settled, ctx, stack):
    """Data, model, best-checkpoint tracker and solver of the run (the run lock entered on `stack`,
    rank 0) -> solver, best, extra (what the checkpoints record), data."""
    config, start = settled.config, settled.start
    say = print if ctx.is_main else (lambda *a, **k: None)
    for line in settled.lines:  # the recipe in force and notes, said once
        say(line, flush=True)

    # every output location is checked, and the checkpoint locked, before the data is read
    checkpoint = Path(config.checkpoint)
    best_path, last_path = best_checkpoint_path(checkpoint), last_checkpoint_path(checkpoint)
    check_writable([("--checkpoint", p) for p in (checkpoint, best_path, last_path)],
                   [("--out_dir", config.out_dir)]
                   + ([("--tensorboard", config.tensorboard)] if config.tensorboard else []))
    first_written = start.checkpoint.get("extra", {}).get("paths", {}) if config.resume else {}
    check_owner(Path(config.out_dir) / f"{checkpoint.stem}_history.json", checkpoint,
                "--checkpoint", same_run=first_written.get("checkpoint"))
    if ctx.is_main:
        stack.enter_context(RunLock(checkpoint, (checkpoint, best_path, last_path)))
    # a new run keeps an earlier run's files of this name: moved aside before its first write
    before_writing = (lambda: None) if config.resume else EarlierRun(checkpoint, config.out_dir,
                                                                    last_path, say)

    # the data, the model checked against it, then the training subset
    begin = time.perf_counter()
    data = load_coco_data(config.data_dir, features=config.features)
    model = starting_model(config, start, data)
    if config.num_samples is not None:
        data = keep_captions(data, config.num_samples, config.seed, config.data_dir)
    images = len(np.unique(data["train_image_idxs"]))
    subset = ("" if config.num_samples is None
              else f" (a seeded subset; the split has {data['train_features'].shape[0]})")
    say(f"loaded {config.data_dir}: {data['train_captions'].shape[0]} training captions of "
        f"{images} images{subset}, {describe_features(data)}, "
        f"{len(data['idx_to_word'])} words ({time.perf_counter() - begin:.1f}s)", flush=True)

    # what every checkpoint of the run records: the data, the settled flags, where it writes
    extra = {"data_path": str(Path(config.data_dir).resolve()), "dataset_id": data["dataset_id"],
             "encoder": data["encoder"], **data["regions"],
             "args": saved_flags(config),
             "paths": {"checkpoint": str(checkpoint.resolve()),
                       "out_dir": str(Path(config.out_dir).resolve())}}
    if config.scst:
        extra["scst"] = {"init_from": str(config.init_from), "baseline": config.baseline,
                         "samples": config.scst_samples, "temperature": config.temperature}
    def save_best(*args):
        before_writing()
        save_checkpoint(*args)

    best = BestCheckpoint.from_config(best_path, save_best, extra, data, config)

    def save_state(solver):
        before_writing()
        save_training_state(solver, last_path,
                            dict(extra, epoch=solver.epoch, iteration=solver.iteration,
                                 tracker=best.state()))

    # the solver of the model type, with the step strategy (cross-entropy or self-critical)
    solver = MODEL_TYPES[config.model].solver_class.from_config(
        model, data, config, ctx, step=from_flags(config, model, data), save_state=save_state,
        stop_early=best.patience_rule(config.patience) if config.patience else None,
        on_epoch_end=epoch_callbacks(best, config.tensorboard, say) if ctx.is_main else None)
    if start is not None and start.state is not None:
        try:
            solver.load_training_state(start.state)
            best.load_state(start.state.tracker)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise UserError(f"{config.resume} holds a damaged training state ({e}): not resumed; "
                            f"use an intact *_last file or start a new run") from None
        say(f"resuming {config.resume} at epoch {solver.epoch + 1}, iteration {solver.iteration}; "
            f"writing {checkpoint} and the plots and history in {config.out_dir}", flush=True)
    elif config.scst and config.eval_every and ctx.is_main:
        best.score_start(model)  # the first point of the val CIDEr curve
    return solver, best, extra, data


def train(settled, ctx):
    """The run in each process; rank 0 alone prints, holds the lock and writes files -> exit code
    (0, or 130 after a clean stop)."""
    config = settled.config
    say = print if ctx.is_main else (lambda *a, **k: None)
    with contextlib.ExitStack() as stack:  # the run lock, held until the end
        solver, best, extra, data = ctx.agreed(lambda: set_up(settled, ctx, stack))
        last_path = last_checkpoint_path(config.checkpoint)
        per_step = (f"batch {config.batch_size} per process x {ctx.world_size} processes = "
                    f"{config.batch_size * ctx.world_size} {solver.step_rule.unit} per step"
                    if ctx.enabled
                    else f"batch {config.batch_size} {solver.step_rule.unit}")
        say(f"training {config.model} for {config.epochs} epoch{'s' * (config.epochs != 1)} on "
            f"{ctx.local_device(config.device)} ({per_step})", flush=True)
        start = time.perf_counter()
        try:
            history = solver.train()
        except TrainingDiverged as e:
            kept = (f"the last good state {last_path} (epoch {solver.epoch}) is kept"
                    if solver.epoch
                    else "no checkpoint was written")
            raise UserError(f"{e}: {step_advice(config)} (see --divergence_factor in --help); "
                            f"{kept}") from None
        if solver.stopped_early:
            say(f"stopped early after epoch {solver.epoch}: {solver.stopped_early}", flush=True)
        if solver.stop_requested:
            say(f"interrupted at epoch {solver.epoch + 1}, iteration {solver.iteration}; continue "
                f"with: python training.py --resume {last_path}", flush=True)
            return 130
        if ctx.is_main:
            save_final_files(config, solver, history, best, extra, time.perf_counter() - start,
                             data, per_step)
    return 0


def step_advice(config):
    """What to change after a run diverged: the learning rate, and the other flags given that
    enlarge its steps."""
    given = [f"--{name} {getattr(config, name):g}" for name in ("weight_decay", "grad_clip")
             if name in config.explicit and getattr(config, name)]
    return "lower --lr" + (f", or check {' and '.join(given)}" if given else "")


class EarlierRun:
    """Called before a new run's first write: moves an earlier run's files of the checkpoint's name
    (the checkpoint, its _best and _last, and its history and plots in out_dir) into <checkpoint's
    folder>/previous_runs/<stem>_<time>/ and says so, once (a run that fails before writing
    anything leaves them in place)."""

    def __init__(self, checkpoint, out_dir, last_path, say):
        self.checkpoint, self.out_dir, self.last_path = Path(checkpoint), Path(out_dir), last_path
        self.say, self.done = say, False

    def __call__(self):
        if self.done:
            return
        self.done = True
        stem = self.checkpoint.stem
        files = [p for p in (self.checkpoint, best_checkpoint_path(self.checkpoint),
                             self.last_path, self.out_dir / f"{stem}_history.json",
                             self.out_dir / f"{stem}_loss.png", self.out_dir / f"{stem}_reward.png")
                 if p.is_file()]
        if not files:
            return
        base = (self.checkpoint.parent / "previous_runs"
                / f"{stem}_{time.strftime('%Y%m%d-%H%M%S')}")
        folder, k = base, 1
        while folder.exists():
            folder, k = base.with_name(f"{base.name}_{k}"), k + 1
        folder.mkdir(parents=True)
        for path in files:
            shutil.move(path, folder / path.name)
        self.say(f"an earlier run's files of {self.checkpoint.name} were moved to {folder} (a new "
                 f"run writes its own; --resume {self.last_path} would have continued it)",
                 flush=True)


def save_final_files(config, solver, history, best, extra, seconds, data, per_step):
    """The final checkpoint (recording the epochs it trained: fewer than --epochs when --patience
    stopped it), the loss (and reward) plots and the history, with a summary."""
    checkpoint = Path(config.checkpoint)
    save_checkpoint(solver.model, checkpoint,
                    dict(extra, epoch=solver.epoch, val_loss=history["val_loss"][-1]))
    history.update(best.metrics)
    out_dir = Path(config.out_dir)
    stem = checkpoint.stem  # every output is named after its run's checkpoint
    if config.scst:  # reward, CIDEr and cross-entropy val loss, each on its own axis
        plot_path = out_dir / f"{stem}_reward.png"
        save_scst_plot(history, f"{config.model}: self-critical fine-tuning of "
                                f"{Path(config.init_from).name}", plot_path)
    else:
        plot_path = out_dir / f"{stem}_loss.png"
        save_loss_plot(history, f"{config.model}: {data['train_captions'].shape[0]} training "
                                f"captions", plot_path)
    history_path = out_dir / f"{stem}_history.json"
    atomic_write_text(history_path, json.dumps(dict(
        history, seconds=seconds, checkpoint_path=str(checkpoint.resolve())), indent=1))
    its = len(history["loss"]) / max(sum(history["train_seconds"]), 1e-9)
    print(f"{its:.1f} training iterations per second ({per_step})")
    print(f"done in {seconds:.1f}s: final train loss {history['loss'][-1]:.4f} (last batch), "
          f"{history['train_loss'][-1]:.4f} (last epoch mean), val loss "
          f"{history['val_loss'][-1]:.4f}")
    print(f"saved checkpoint {checkpoint}, the best ({best.describe()}) "
          f"{best_checkpoint_path(checkpoint)} and the resumable state "
          f"{last_checkpoint_path(checkpoint)}")
    print(f"saved plot {plot_path} and history {history_path}")


def run(settled):
    """Train as the settled configuration says -> the process exit code (0, or 130 after a clean
    stop). One process, or one of torchrun's: the same code."""
    limit_threads(choose_threads(settled.config.threads,
                                 print if is_main_process() else (lambda *a, **k: None)))
    # numpy steps reuse their large temporaries instead of page-faulting them in
    keep_freed_memory()
    torch.manual_seed(settled.config.seed)
    ctx = distributed.init(torch.device(settled.config.device).type)
    try:
        return train(settled, ctx)
    finally:
        ctx.close()
