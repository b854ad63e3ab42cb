"""Train a captioning decoder (RNN, LSTM, GRU or Transformer) on precomputed image features.

Usage:
    python training.py --model rnn
    python training.py --model lstm --num_samples 300                 # recipe small-data: overfit a subset
    python training.py --model transformer --device cuda
    python training.py --resume lstm_checkpoint_last.npz [--epochs 20]
    python training.py --model lstm --scst --init_from lstm_checkpoint.npz   # recipe scst
    torchrun --nproc_per_node 4 training.py --model transformer --device cuda   # --batch_size is per process

Reads the data, builds (or loads) the model, trains it with its solver, and writes the checkpoint
(--checkpoint, final weights), *_best.* next to it (by validation loss, or by CIDEr with
--eval_every), the resumable *_last.* after every epoch and on Ctrl-C/SIGTERM, and in --out_dir
the loss plot <stem>_loss.png and the history <stem>_history.json, named after the checkpoint's stem
(lstm_checkpoint_loss.png), so that runs sharing an --out_dir keep their own files. All writes are atomic; a
second run writing the same checkpoint is refused. Every flag and its default: --help.
"""
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from core.util import distributed
from core.training.best import BestCheckpoint
from core.model.checkpoint import check_checkpoint, load_checkpoint, save_checkpoint, save_training_state
from core.util.cli import (best_checkpoint_path, interrupts, last_checkpoint_path, out_of_memory_errors, resolve_device,
                      user_errors)
from core.data.coco_utils import describe_features, default_data_dir, keep_captions, load_coco_data
from core.util.errors import UserError
from core.util.fileio import RunLock, atomic_write_text, check_writable
from core.util.memory import keep_freed_memory
from core.evaluation.plots import save_loss_plot, save_scst_plot
from core.model.registry import MODEL_TYPES, build_model
from core.training.config import load_resume, parse_args, recipe_for_data, resumed_batch_size, saved_flags
from core.training.solver_base import TrainingDiverged
from core.training.steps import from_flags
from core.training.tensorboard_log import TensorBoardLog, summary_writer


def starting_model(args, data, ident, resumed):
    """The model to train: the resumed one, the --init_from checkpoint (whose sizes then become the
    run's), or a new one; each checked against the data."""
    if resumed is not None or args.init_from:
        path = args.resume or args.init_from
        model, config = resumed if resumed is not None else load_checkpoint(
            args.init_from, vocabulary=data["idx_to_word"],
            missing_hint="pass the checkpoint to fine-tune to --init_from")
        trained_on = config.get("extra", {})
        if trained_on.get("dataset_id") not in (None, ident):
            raise UserError(f"{path} was trained on another dataset ({trained_on.get('data_path')}) than "
                            f"{args.data_dir}: pass --data_dir {trained_on.get('data_path')}")
        check_checkpoint(config, path, args.model, data["idx_to_word"])
        for name in MODEL_TYPES[args.model].size_flags:
            setattr(args, name, config[name])
        return model
    return build_model(args.model, data, vars(args), seed=args.seed)


def run(args):
    """Train as the flags say; returns the process exit code (0, or 130 after a clean stop)."""
    resumed = config = state = None
    if args.resume:
        args, model, config, state = load_resume(args)
        resumed = model, config
    keep_freed_memory()  # numpy steps reuse their large temporaries instead of page-faulting them in
    torch.manual_seed(args.seed)
    args.device = resolve_device(args.device) if MODEL_TYPES[args.model].uses_torch else "cpu"
    ctx = distributed.init(torch.device(args.device).type)
    args.device = ctx.local_device(args.device)
    try:
        if state is not None:
            args.batch_size, note = resumed_batch_size(
                resumed[1]["extra"]["args"]["batch_size"], state["loop"].get("world_size", 1), ctx.world_size,
                args.batch_size if "batch_size" in args.explicit else None, "images" if args.scst else "captions")
            if note and ctx.is_main:
                print(note, flush=True)
        return train(args, ctx, resumed, state)
    finally:
        ctx.close()


def set_up(args, ctx, resumed, state, stack):
    """Data, model, best-checkpoint tracker and solver of the run (the run lock entered on `stack`, rank 0)
    -> solver, best, extra (what the checkpoints record), data."""
    say = print if ctx.is_main else (lambda *a, **k: None)
    say(args.recipe_line, flush=True)
    if args.data_dir is None:
        args.data_dir = str(default_data_dir(log=say))
    checkpoint = Path(args.checkpoint)
    best_path, last_path = best_checkpoint_path(checkpoint), last_checkpoint_path(checkpoint)
    check_writable([("--checkpoint", p) for p in (checkpoint, best_path, last_path)], [("--out_dir", args.out_dir)])
    if ctx.is_main:
        stack.enter_context(RunLock(checkpoint, (checkpoint, best_path, last_path)))
    start = time.perf_counter()
    data = load_coco_data(args.data_dir, features=MODEL_TYPES[args.model].features)
    ident = data["dataset_id"]
    for line in recipe_for_data(args, min(args.num_samples or math.inf, data["train_captions"].shape[0])):
        say(line, flush=True)  # before the model is built: the recipe may set its dropout
    model = starting_model(args, data, ident, resumed)  # checked against the data before the subset is taken
    if args.num_samples is not None:
        data = keep_captions(data, args.num_samples, args.seed, args.data_dir)
    images = len(np.unique(data["train_image_idxs"]))
    subset = ("" if args.num_samples is None
              else f" (a seeded subset; the split has {data['train_features'].shape[0]})")
    say(f"loaded {args.data_dir}: {data['train_captions'].shape[0]} training captions of {images} images{subset}, "
        f"{describe_features(data['train_features'])}, {len(data['idx_to_word'])} words "
        f"({time.perf_counter() - start:.1f}s)", flush=True)
    extra = {"data_path": str(Path(args.data_dir).resolve()), "dataset_id": ident, "args": saved_flags(args),
             "paths": {"checkpoint": str(checkpoint.resolve()), "out_dir": str(Path(args.out_dir).resolve())}}
    if args.scst:
        extra["scst"] = {"init_from": str(args.init_from), "baseline": args.baseline, "samples": args.scst_samples,
                         "temperature": args.temperature}
    best = BestCheckpoint(best_path, save_checkpoint, extra, data, args.eval_every, args.eval_images,
                          final_epoch=args.epochs, seed=args.seed, verbose=not args.quiet)

    board = None
    if args.tensorboard and ctx.is_main:
        writer = summary_writer(args.tensorboard)
        if writer is None:
            say("note: --tensorboard needs the tensorboard package (pip install tensorboard): not logging to it; "
                "the JSON history is written as always")
        board = writer and TensorBoardLog(writer, best)

    def on_epoch_end(solver, epoch):
        best.on_epoch_end(solver, epoch)
        if board:
            board.on_epoch_end(solver, epoch)

    def save_state(solver):
        save_training_state(solver, last_path, dict(extra, epoch=solver.epoch, iteration=solver.iteration,
                                                    tracker=best.state()))

    kind, rule = MODEL_TYPES[args.model], from_flags(args, model, data)
    options = {k: getattr(args, k) for k in kind.solver_class.OPTIONS}  # the solver's own flags
    solver = kind.solver_class(
        model, data, learning_rate=args.lr, **options, step=rule, num_epochs=args.epochs, batch_size=args.batch_size,
        lr_decay=args.lr_decay, val_samples=args.val_samples, seed=args.seed, max_iters=args.max_iters,
        verbose=not args.quiet and ctx.is_main, save_state=save_state, divergence_factor=args.divergence_factor,
        on_epoch_end=on_epoch_end if ctx.is_main else None, dist=ctx)
    if state is not None:
        try:
            solver.load_training_state(state)
            best.load_state(resumed[1]["extra"]["tracker"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise UserError(f"{args.resume} holds a damaged training state ({e}): not resumed; use an intact "
                            "*_last file or start a new run") from None
        say(f"resuming {args.resume} at epoch {solver.epoch + 1}, iteration {solver.iteration}; writing "
            f"{checkpoint} and the plots and history in {args.out_dir}", flush=True)
    elif args.scst and args.eval_every and ctx.is_main:
        best.score_start(model)  # the first point of the val CIDEr curve
    return solver, best, extra, data


def train(args, ctx, resumed, state):
    """run() in each process; rank 0 alone prints, holds the lock and writes files."""
    say = print if ctx.is_main else (lambda *a, **k: None)
    with contextlib.ExitStack() as stack:  # the run lock, held until the end
        solver, best, extra, data = ctx.agreed(lambda: set_up(args, ctx, resumed, state, stack))
        last_path = last_checkpoint_path(args.checkpoint)
        per_step = (f"batch {args.batch_size} per process x {ctx.world_size} processes = "
                    f"{args.batch_size * ctx.world_size} {solver.step_rule.unit} per step" if ctx.enabled
                    else f"batch {args.batch_size} {solver.step_rule.unit}")
        say(f"training {args.model} for {args.epochs} epoch{'s' * (args.epochs != 1)} on {args.device} ({per_step})",
            flush=True)
        start = time.perf_counter()
        try:
            history = solver.train()
        except TrainingDiverged as e:
            kept = (f"the last good state {last_path} (epoch {solver.epoch}) is kept" if solver.epoch
                    else "no checkpoint was written")
            raise UserError(f"{e}: lower --lr (see --divergence_factor in --help); {kept}") from None
        if solver.stop_requested:
            say(f"interrupted at epoch {solver.epoch + 1}, iteration {solver.iteration}; continue with: "
                f"python training.py --resume {last_path}", flush=True)
            return 130
        if ctx.is_main:
            save_final_files(args, solver.model, history, best, extra, time.perf_counter() - start, data, per_step)
    return 0


def save_final_files(args, model, history, best, extra, seconds, data, per_step):
    """The final checkpoint, the loss (and reward) plots and the history, with a summary."""
    checkpoint = Path(args.checkpoint)
    save_checkpoint(model, checkpoint, dict(extra, epoch=args.epochs, val_loss=history["val_loss"][-1]))
    history.update(best.metrics)
    out_dir = Path(args.out_dir)
    stem = checkpoint.stem  # every output is named after its run's checkpoint
    if args.scst:  # reward, CIDEr and cross-entropy val loss, each on its own axis
        plot_path = out_dir / f"{stem}_reward.png"
        save_scst_plot(history, f"{args.model}: self-critical fine-tuning of {Path(args.init_from).name}", plot_path)
    else:
        plot_path = out_dir / f"{stem}_loss.png"
        save_loss_plot(history, f"{args.model}: {data['train_captions'].shape[0]} training captions", plot_path)
    history_path = out_dir / f"{stem}_history.json"
    atomic_write_text(history_path, json.dumps(dict(history, seconds=seconds), indent=1))
    its = len(history["loss"]) / max(sum(history["train_seconds"]), 1e-9)
    print(f"{its:.1f} training iterations per second ({per_step})")
    print(f"done in {seconds:.1f}s: final train loss {history['loss'][-1]:.4f} (last batch), "
          f"{history['train_loss'][-1]:.4f} (last epoch mean), val loss {history['val_loss'][-1]:.4f}")
    print(f"saved checkpoint {checkpoint}, the best ({best.describe()}) {best_checkpoint_path(checkpoint)} and the "
          f"resumable state {last_checkpoint_path(checkpoint)}")
    print(f"saved plot {plot_path} and history {history_path}")


def main(argv=None):
    args = parse_args(argv)
    with interrupts("training.py", "the files written before (checkpoints of finished epochs) are kept"), \
            user_errors("training.py"), out_of_memory_errors():
        code = run(args)
    if code:
        sys.exit(code)
    return 0


if __name__ == "__main__":
    distributed.exit_after(main)
