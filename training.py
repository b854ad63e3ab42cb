"""Train a captioning decoder (vanilla RNN, LSTM or Transformer) on precomputed image features.

Usage:
    python training.py --model rnn
    python training.py --model lstm --num_samples 300 --epochs 100 --batch_size 50
    python training.py --model transformer --device cuda
    python training.py --resume lstm_checkpoint_last.npz [--epochs 20]
    python training.py --model lstm --scst --init_from lstm_checkpoint.npz [--scst_samples 5 --baseline greedy]
    torchrun --nproc_per_node 4 training.py --model transformer --device cuda   # --batch_size is per process

Writes the checkpoint (--checkpoint, final weights), the best checkpoint next to it
(*_best.*: by validation loss, or by validation CIDEr with --eval_every), the resumable
state *_last.* next to it after every epoch and on Ctrl-C/SIGTERM, and in --out_dir the loss
plot <model>_loss.png and the history <model>_history.json. All writes are atomic; a second
run writing the same checkpoint is refused.
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.checkpoint import (  # noqa: E402
    check_checkpoint, load_checkpoint, load_training_state, save_checkpoint, save_training_state)
from core.cider import CiderD  # noqa: E402
from core.cli import (  # noqa: E402
    ArgumentParser, best_checkpoint_path, is_main_process, resolve_device, user_errors)
from core import distributed  # noqa: E402
from core.coco_utils import default_data_dir, load_coco_data  # noqa: E402
from core.errors import UserError  # noqa: E402
from core.evaluation import caption_split, references_by_image, score_captions  # noqa: E402
from core.features import dataset_id  # noqa: E402
from core.fileio import RunLock, atomic_write_text, save_figure  # noqa: E402
from core.memory import keep_freed_memory  # noqa: E402
from core.registry import MODEL_TYPES  # noqa: E402
from core.solver_base import SelfCritical, TrainingDiverged  # noqa: E402

SCST_LR = 5e-5
SMALL_DATA = 1000  # --num_samples up to this, with no --epochs/--batch_size/--lr_decay, use the recipe below
SMALL_DATA_RECIPE = {"epochs": 100, "batch_size": 50, "lr_decay": 1.0, "val_samples": 100, "dropout": 0.0}


FIXED_ON_RESUME = ("model", "num_samples", "batch_size", "lr", "lr_decay", "update_rule", "hidden_dim", "wordvec_dim",
                   "num_heads", "num_layers", "dim_feedforward", "dropout", "val_samples", "eval_every", "eval_images",
                   "seed", "max_iters", "divergence_factor", "scst", "init_from", "scst_samples", "baseline",
                   "temperature")


def build_parser():
    p = ArgumentParser(description="Train a captioning decoder on precomputed image features.")
    p.add_argument("--model", choices=tuple(MODEL_TYPES), help="decoder to train (required unless --resume)")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="continue the run saved in PATH (the *_last checkpoint written after every epoch and on "
                        "Ctrl-C); the run's flags are read from it, --epochs may be raised, flags that contradict "
                        "it are an error")
    p.add_argument("--data_dir", default=None,
                   help="dataset directory in the CS231n COCO layout (default: core/datasets/coco_captioning "
                        "when downloaded, else the bundled core/datasets/sample_captioning)")
    p.add_argument("--num_samples", type=int, default=None,
                   help="train on a random subset of this many captions, drawn without replacement (default: "
                        f"all); up to {SMALL_DATA} captions, unless --epochs, --batch_size or --lr_decay is given, "
                        "the original repository's small-data recipe is used so that the model overfits them: "
                        "100 epochs of batch 50, no lr decay, no dropout, 100 validation captions")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training captions")
    p.add_argument("--batch_size", type=int, default=100, help="captions per minibatch")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: " + ", ".join(f"{t.default_lr:g} for {m}" for m, t in MODEL_TYPES.items())
                        + ")")
    p.add_argument("--lr_decay", type=float, default=0.95, help="learning rate multiplier after each epoch")
    p.add_argument("--update_rule", default="adam", choices=("sgd", "sgd_momentum", "rmsprop", "adam"),
                   help="update rule for the numpy models (the transformer always uses torch Adam)")
    p.add_argument("--hidden_dim", type=int, default=512, help="hidden state size H of rnn/lstm/gru")
    p.add_argument("--wordvec_dim", type=int, default=256, help="word vector size W (the transformer's width)")
    p.add_argument("--num_heads", type=int, default=4, help="attention heads of the transformer")
    p.add_argument("--num_layers", type=int, default=2, help="decoder layers of the transformer")
    p.add_argument("--dim_feedforward", type=int, default=2048, help="feed-forward width of the transformer's layers")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout rate of the transformer")
    p.add_argument("--val_samples", type=int, default=1000,
                   help="size of the fixed validation subset whose loss is reported each epoch")
    p.add_argument("--eval_every", type=int, default=0,
                   help="every this many epochs, score BLEU-4/CIDEr on --eval_images validation images and keep "
                        "the best checkpoint by CIDEr (0: off; the best checkpoint is then by validation loss)")
    p.add_argument("--eval_images", type=int, default=500, help="validation images scored by --eval_every")
    p.add_argument("--divergence_factor", type=float, default=10.0,
                   help="stop with an error when a batch loss is NaN/inf or more than this many times the run's "
                        "first batch loss, or the validation loss is NaN/inf (the last good checkpoints are kept)")
    p.add_argument("--seed", type=int, default=231, help="seed for data subset, initialisation and shuffling")
    p.add_argument("--checkpoint", default=None,
                   help="where to save the model (default: " + ", ".join(t.checkpoint for t in MODEL_TYPES.values())
                        + "); *_best and the resumable *_last go next to it")
    p.add_argument("--out_dir", default="outputs", help="directory for the loss plot and history")
    p.add_argument("--device", default=None, help="transformer device: cpu or cuda (default: cuda when available)")
    p.add_argument("--amp", action="store_true", help="bfloat16 mixed precision for the transformer on CUDA")
    p.add_argument("--max_iters", type=int, default=None,
                   help="stop each epoch after this many minibatches (dry runs and timing; default: whole epochs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--scst", action="store_true",
                   help="self-critical sequence training: fine-tune the --init_from checkpoint by REINFORCE with "
                        "CIDEr-D (training references' document frequencies) as the reward; defaults then: "
                        f"--lr {SCST_LR:g}, --eval_every 1 (best checkpoint by val CIDEr), checkpoint *_scst")
    p.add_argument("--init_from", default=None, metavar="CHECKPOINT",
                   help="the cross-entropy-trained checkpoint --scst starts from")
    p.add_argument("--scst_samples", type=int, default=5, help="captions sampled per image by --scst")
    p.add_argument("--baseline", default="greedy", choices=("greedy", "mean"),
                   help="--scst baseline: the greedy caption's reward, or the mean reward of the image's other samples")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of --scst")
    return p


def explicit_flags(parser, argv):
    """The destinations of the flags given on the command line (not left at their defaults)."""
    actions = [a for a in parser._actions if a.dest != "help"]
    defaults = [a.default for a in actions]
    for a in actions:
        a.default = argparse.SUPPRESS
    try:
        return set(vars(parser.parse_args(argv)))
    finally:
        for a, default in zip(actions, defaults):
            a.default = default


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    args.explicit = sorted(explicit_flags(p, argv))
    if args.model is None and args.resume is None:
        p.error("--model is required (or --resume PATH)")
    if not 0 <= args.dropout < 1:
        p.error("--dropout must be in [0, 1)")
    if args.max_iters is not None and args.max_iters <= 0:
        p.error("--max_iters must be positive")
    if args.eval_every < 0:
        p.error("--eval_every must be 0 (off) or positive")
    for name in ("epochs", "batch_size", "hidden_dim", "wordvec_dim", "num_heads", "num_layers", "dim_feedforward",
                 "val_samples", "eval_images"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive")
    for name in ("lr", "lr_decay", "divergence_factor"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            p.error(f"--{name} must be positive and finite, got {value}")
    if args.num_samples is not None and args.num_samples <= 0:
        p.error("--num_samples must be positive")
    args.recipe = None
    if args.scst_samples <= 0 or args.temperature < 0:
        p.error("--scst_samples must be positive and --temperature >= 0")
    if args.resume is None and args.scst != (args.init_from is not None):
        p.error("--scst needs --init_from CHECKPOINT (and --init_from is for --scst)")
    if args.scst and args.resume is None:
        if "lr" not in args.explicit:
            args.lr = SCST_LR
        if "eval_every" not in args.explicit:
            args.eval_every = 1
        if args.checkpoint is None:
            default = Path(MODEL_TYPES[args.model].checkpoint)
            args.checkpoint = str(default.with_name(f"{default.stem}_scst{default.suffix}"))
    if args.resume is None:
        if (args.num_samples is not None and args.num_samples <= SMALL_DATA
                and not {"epochs", "batch_size", "lr_decay"} & set(args.explicit)):
            args.recipe = "small-data"
            for name, value in SMALL_DATA_RECIPE.items():
                if name not in args.explicit:
                    setattr(args, name, value)
        if args.lr is None:
            args.lr = MODEL_TYPES[args.model].default_lr
        if args.checkpoint is None:
            args.checkpoint = MODEL_TYPES[args.model].checkpoint
    return args


def resumed_args(args, config, path):
    """The flags of the run saved in a resumable checkpoint, with the ones given now that may
    change (epochs, paths, device, output); UserError for a given flag that contradicts it."""
    saved = dict(config["extra"]["args"])
    for name in args.explicit:
        if name in FIXED_ON_RESUME and getattr(args, name) != saved.get(name):
            raise UserError(f"--{name} {getattr(args, name)} contradicts {path}, which was trained with "
                            f"--{name} {saved.get(name)}: leave it out to resume, or start a new run")
    merged = argparse.Namespace(**saved)
    for name in args.explicit:
        setattr(merged, name, getattr(args, name))
    merged.resume, merged.explicit = str(path), args.explicit
    if "device" not in args.explicit:
        merged.device = None  # the machine of this run decides, as for a new run
    if "checkpoint" not in args.explicit:
        merged.checkpoint = str(Path(path).with_name(Path(saved["checkpoint"]).name))
    if "data_dir" not in args.explicit:
        merged.data_dir = config["extra"]["data_path"]
    return merged


def model_config(args, data):
    """The config dict (as model.config() gives it) of the model args.model sized for the data."""
    model_class = MODEL_TYPES[args.model].model_class
    return {"model": args.model, "input_dim": data["train_features"].shape[1], "idx_to_word": list(data["idx_to_word"]),
            "max_length": max(50, data["train_captions"].shape[1]), "dtype": "float32",
            **{name: getattr(args, name) for name in model_class.SIZE_FLAGS}}


def check_memory(model_class, config):
    """UserError when the weights, their gradients and two optimizer moments (float32) cannot fit in
    this machine's memory."""
    need = 16 * model_class.count_parameters(config)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > total:
        raise UserError(f"a {config['model']} model of these sizes has {need // 16:,} weights, which with their "
                        f"gradients and optimizer state need about {need / 2**30:,.0f} GiB; this machine has "
                        f"{total / 2**30:,.0f} GiB: use smaller --hidden_dim/--wordvec_dim/--dim_feedforward")


def build_model(args, data):
    """Model of args.model sized for the data's features and vocabulary; UserError when the sizes do
    not fit together or the model cannot fit in memory."""
    config = model_config(args, data)
    model_class = MODEL_TYPES[args.model].model_class
    check_memory(model_class, config)
    try:
        return model_class.from_config(config, seed=args.seed)
    except ValueError as e:
        raise UserError(f"cannot build a {args.model} with these sizes: {e}") from None


class BestTracker:
    """Keeps the best checkpoint: by validation loss, or by CIDEr on a fixed set of validation
    images every --eval_every epochs when that flag is set."""

    def __init__(self, args, data, path, extra):
        self.args, self.data, self.path, self.extra = args, data, path, extra
        self.metrics = {"eval_epoch": [], "val_bleu4": [], "val_cider": []}
        self.best = None
        if args.eval_every:
            images = np.unique(data["val_image_idxs"])
            rng = np.random.default_rng(args.seed)
            self.images = np.sort(rng.choice(images, size=min(args.eval_images, len(images)), replace=False))
            self.refs = references_by_image(data["val_captions"], data["val_image_idxs"], data["idx_to_word"])

    def state(self):
        """JSON-able state for a resumable checkpoint."""
        return {"metrics": self.metrics, "best": self.best}

    def load_state(self, state):
        self.metrics = {k: list(v) for k, v in state["metrics"].items()}
        self.best = state["best"]

    def on_epoch_end(self, solver, epoch, is_best_loss):
        info = dict(self.extra, epoch=epoch, val_loss=solver.history["val_loss"][-1])
        if not self.args.eval_every:
            if is_best_loss:
                self.best = info
                save_checkpoint(solver.model, self.path, info)
            return
        if epoch % self.args.eval_every and epoch != self.args.epochs:
            return
        predictions = caption_split(solver.model, self.data, "val", images=self.images, progress=False)
        scores = score_captions(predictions, {i: self.refs[int(i)] for i in self.images}, meteor=False)
        for key, name in (("val_bleu4", "BLEU-4"), ("val_cider", "CIDEr")):
            self.metrics[key].append(scores[name])
        self.metrics["eval_epoch"].append(epoch)
        better = self.best is None or scores["CIDEr"] > self.best["val_cider"]
        if not self.args.quiet:
            print(f"epoch {epoch}: on {len(self.images)} val images BLEU-4 {scores['BLEU-4']:.4f} "
                  f"CIDEr {scores['CIDEr']:.4f}" + ("  (best)" if better else ""), flush=True)
        if better:
            self.best = dict(info, val_bleu4=scores["BLEU-4"], val_cider=scores["CIDEr"])
            save_checkpoint(solver.model, self.path, self.best)

    def describe(self):
        if self.best is None:
            return "none"
        if "val_cider" in self.best:
            return f"epoch {self.best['epoch']}, CIDEr {self.best['val_cider']:.4f}"
        return f"epoch {self.best['epoch']}, val loss {self.best['val_loss']:.4f}"


def save_loss_plot(history, title, path):
    """Per-iteration training loss with per-epoch train and validation loss, saved as PNG."""
    iters_per_epoch = len(history["loss"]) / max(len(history["train_loss"]), 1)
    epochs_x = iters_per_epoch * np.arange(1, len(history["train_loss"]) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(np.arange(1, len(history["loss"]) + 1), history["loss"], color="tab:blue", alpha=0.3,
            label="train (per iteration)")
    ax.plot(epochs_x, history["train_loss"], "o-", color="tab:blue", label="train (epoch mean)")
    ax.plot(epochs_x, history["val_loss"], "s-", color="tab:orange", label="validation")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (summed over words, per caption)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def save_scst_plot(history, title, path):
    """Mean sampled reward and baseline per iteration, and val CIDEr per epoch, saved as PNG."""
    fig, (ax_reward, ax_cider) = plt.subplots(1, 2, figsize=(11, 4))
    ax_reward.plot(np.arange(1, len(history["reward"]) + 1), history["reward"], label="mean reward of the samples")
    ax_reward.plot(np.arange(1, len(history["baseline"]) + 1), history["baseline"], label="mean baseline")
    ax_reward.set_xlabel("iteration")
    ax_reward.set_ylabel("CIDEr-D (training references)")
    ax_reward.legend()
    ax_cider.plot(history["eval_epoch"], history["val_cider"], "o-", color="tab:red")
    ax_cider.set_xlabel("epoch")
    ax_cider.set_ylabel("val CIDEr (greedy)")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def initial_model(args, data, ident):
    """The --init_from checkpoint of --scst, checked against --model and the data; the size flags
    are set to its sizes (they are recorded with the run)."""
    model, config = load_checkpoint(args.init_from)
    check_checkpoint(config, args.init_from, args.model, data["idx_to_word"])
    if config.get("extra", {}).get("dataset_id") not in (None, ident):
        raise UserError(f"{args.init_from} was trained on another dataset than {args.data_dir}: "
                        "pass the --data_dir it was trained on")
    for name in MODEL_TYPES[args.model].model_class.SIZE_FLAGS:
        setattr(args, name, config[name])
    return model


def last_checkpoint_path(path):
    """rnn_checkpoint.npz -> rnn_checkpoint_last.npz (the resumable state)"""
    path = Path(path)
    return path.with_name(f"{path.stem}_last{path.suffix}")


def make_solver(args, model, data, **common):
    """The solver of args.model around the model, with the options it takes from the flags."""
    solver_class = MODEL_TYPES[args.model].solver_class
    return solver_class(model, data, learning_rate=args.lr, **{k: getattr(args, k) for k in solver_class.OPTIONS},
                        **common)


def load_resume(args):
    """--resume: the saved run's flags merged with the given ones, its model and training state."""
    model, config, state = load_training_state(args.resume)
    if config.get("extra", {}).get("args") is None:
        raise UserError(f"{args.resume} was not written by training.py: cannot resume from it")
    args = resumed_args(args, config, args.resume)
    done = state["loop"]["epoch"]
    if args.epochs <= done and not state["loop"]["iteration"]:
        raise UserError(f"{args.resume} has already trained {done} of its {args.epochs} epochs: "
                        f"pass --epochs larger than {done} to train more")
    return args, model, config, state


def run(args):
    """Train as the flags say; returns the process exit code (0, or 130 after a clean stop)."""
    resume_model = config = state = None
    if args.resume:
        args, resume_model, config, state = load_resume(args)
    keep_freed_memory()  # numpy steps reuse their large temporaries instead of page-faulting them in
    torch.manual_seed(args.seed)
    args.device = resolve_device(args.device) if MODEL_TYPES[args.model].uses_torch else "cpu"
    ctx = distributed.init(torch.device(args.device).type)
    args.device = ctx.local_device(args.device)
    try:
        return _train(args, ctx, resume_model, config, state)
    finally:
        ctx.close()


def _train(args, ctx, resume_model, config, state):
    """run() in each process; rank 0 alone prints, holds the lock and writes files."""
    say = print if ctx.is_main else (lambda *a, **k: None)
    if args.data_dir is None:
        args.data_dir = str(default_data_dir(log=say))
    checkpoint = Path(args.checkpoint)
    best_path, last_path = best_checkpoint_path(checkpoint), last_checkpoint_path(checkpoint)
    lock = RunLock(checkpoint, (checkpoint, best_path, last_path)) if ctx.is_main else contextlib.nullcontext()
    with lock:
        start = time.perf_counter()
        data = load_coco_data(args.data_dir, max_train=args.num_samples, seed=args.seed)
        images = len(np.unique(data["train_image_idxs"]))
        subset = "" if args.num_samples is None else f" (a seeded subset; the split has {data['train_features'].shape[0]})"
        say(f"loaded {args.data_dir}: {data['train_captions'].shape[0]} training captions of {images} images"
              f"{subset}, {data['train_features'].shape[1]}-d features, {len(data['idx_to_word'])} words "
              f"({time.perf_counter() - start:.1f}s)", flush=True)
        if args.recipe:
            say(f"small-data recipe (--num_samples {args.num_samples} <= {SMALL_DATA}, no --epochs/--batch_size/"
                  f"--lr_decay given): {args.epochs} epochs of batch {args.batch_size}, lr decay {args.lr_decay}, "
                  "as the original repository trained small subsets", flush=True)
        ident = dataset_id(data["train_features"], data["idx_to_word"])
        extra = {"data_dir": str(Path(args.data_dir).name), "data_path": str(Path(args.data_dir).resolve()),
                 "dataset_id": ident}
        if resume_model is None and args.scst:
            model = initial_model(args, data, ident)
        elif resume_model is None:
            model = build_model(args, data)
        else:
            model = resume_model
            check_checkpoint(config, args.resume, args.model, data["idx_to_word"])
            if config["extra"].get("dataset_id") != ident:
                raise UserError(f"{args.resume} was trained on another dataset than {args.data_dir}: "
                                "pass the --data_dir it was trained on")

        extra["args"] = {k: v for k, v in vars(args).items() if k != "explicit"}  # as the model was built
        scst = None
        if args.scst:
            extra["scst"] = {"init_from": str(args.init_from), "baseline": args.baseline, "samples": args.scst_samples,
                             "temperature": args.temperature}
            T = data["train_captions"].shape[1] - 1  # words after <START>, <END> included
            scst = SelfCritical(CiderD(references_by_image(data["train_captions"], data["train_image_idxs"],
                                                           data["idx_to_word"])),
                                args.scst_samples, args.baseline, args.temperature,
                                max_length=min(T, getattr(model, "max_length", T)))  # models with a position limit
        tracker = BestTracker(args, data, best_path, extra)

        def save_state(solver):
            info = dict(extra, epoch=solver.epoch, iteration=solver.iteration, tracker=tracker.state())
            save_training_state(solver, last_path, info)

        solver = make_solver(args, model, data, scst=scst, num_epochs=args.epochs, batch_size=args.batch_size,
                             lr_decay=args.lr_decay, val_samples=args.val_samples, seed=args.seed,
                             verbose=not args.quiet and ctx.is_main, save_state=save_state, max_iters=args.max_iters,
                             on_epoch_end=tracker.on_epoch_end if ctx.is_main else None,
                             divergence_factor=args.divergence_factor, dist=ctx)
        if state is not None:
            solver.load_training_state(state)
            tracker.load_state(config["extra"]["tracker"])
            say(f"resuming {args.resume} at epoch {solver.epoch + 1}, iteration {solver.iteration}", flush=True)
        per_step = (f"batch {args.batch_size} per process x {ctx.world_size} processes = "
                    f"{args.batch_size * ctx.world_size} captions per step" if ctx.enabled else f"batch {args.batch_size}")
        say(f"training {args.model} for {args.epochs} epochs on {args.device} ({per_step})", flush=True)
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
        seconds = time.perf_counter() - start
        if not ctx.is_main:
            return 0
        save_checkpoint(model, checkpoint, dict(extra, epoch=args.epochs, val_loss=history["val_loss"][-1]))
        history.update(tracker.metrics)
        out_dir = Path(args.out_dir)
        plot_path = out_dir / f"{args.model}_loss.png"
        save_loss_plot(history, f"{args.model}: {data['train_captions'].shape[0]} training captions", plot_path)
        if args.scst:
            scst_plot = out_dir / f"{args.model}_scst.png"
            save_scst_plot(history, f"{args.model}: self-critical fine-tuning of {Path(args.init_from).name}",
                           scst_plot)
            say(f"saved reward and CIDEr plot {scst_plot}")
        atomic_write_text(out_dir / f"{args.model}_history.json", json.dumps(dict(history, seconds=seconds), indent=1))
        its = len(history["loss"]) / max(sum(history["train_seconds"]), 1e-9)
        say(f"{its:.1f} training iterations per second (batch {args.batch_size})")
        say(f"done in {seconds:.1f}s: final train loss {history['loss'][-1]:.4f} (last batch), "
              f"{history['train_loss'][-1]:.4f} (last epoch mean), val loss {history['val_loss'][-1]:.4f}")
        say(f"saved checkpoint {checkpoint}, the best ({tracker.describe()}) {best_path} and the resumable "
              f"state {last_path}")
        say(f"saved loss plot {plot_path}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    try:
        with user_errors("training.py"):
            try:
                code = run(args)
            except MemoryError as e:
                raise UserError(f"out of memory ({e}): use a smaller model (--hidden_dim, --wordvec_dim, "
                                "--dim_feedforward), --batch_size or --num_samples") from None
            except RuntimeError as e:
                if "allocate" not in str(e) and not isinstance(e, torch.OutOfMemoryError):
                    raise
                raise UserError(f"out of memory ({str(e).splitlines()[0][:200]}): use a smaller model "
                                "(--wordvec_dim, --dim_feedforward, --num_layers) or --batch_size") from None
    except KeyboardInterrupt:
        if is_main_process():
            sys.stderr.write("training.py: stopped at once; the files written before (checkpoints of finished "
                             "epochs) are kept\n")
        sys.exit(130)
    if code:
        sys.exit(code)
    return 0


if __name__ == "__main__":
    main()
