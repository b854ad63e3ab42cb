"""The shared training loop in-process, with a tiny fake model, and what both solvers add to it."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import core.training.run as run_module
from core.training.best import BestCheckpoint
from core.model.registry import MODEL_TYPES
from core.training.solver_base import SolverBase
from core.training.solver_torch import TorchSolver
from tests.helpers import tiny_model, tiny_solver

WORDS = {"<NULL>": 0, "<START>": 1, "<END>": 2, "a": 3, "b": 4}


def _data(num_train=23, num_val=17):
    """Captions whose first word slot holds their own row number, so a batch says which rows it holds."""
    def split(n):
        captions = np.zeros((n, 4), dtype=np.int32)
        captions[:, 0] = np.arange(n)
        return captions, np.arange(n, dtype=np.int32) % 5, np.zeros((5, 3), dtype=np.float32)

    data = {}
    for name, n in (("train", num_train), ("val", num_val)):
        data[f"{name}_captions"], data[f"{name}_image_idxs"], data[f"{name}_features"] = split(n)
    return data


class FakeSolver(SolverBase):
    """Records what the loop asks of a solver; the loss of a training batch is scripted."""

    def __init__(self, data, train_losses=None, val_value=None, **kw):
        self.seen, self.lr, self.calls = [], 1.0, []
        self.train_losses = iter(train_losses) if train_losses is not None else None
        self.val_value = val_value if val_value is not None else (lambda rows: 5.0)
        super().__init__(None, data, **kw)

    def gradients(self, features, captions, caption_weights=None, weight=1.0, dropout=True):
        self.seen.append(captions[:, 0].copy())
        return (next(self.train_losses) if self.train_losses is not None else 1.0), None

    def apply(self, gradients):
        pass

    def _eval_loss(self, features, captions):
        return float(np.mean([self.val_value(row) for row in captions[:, 0]]))

    def _decay_lr(self, factor):
        self.lr *= factor

    def _optimizer_state(self):
        return {"lr": self.lr}

    @staticmethod
    def check_optimizer_state(model, state):
        if not isinstance(state.get("lr"), float):
            raise ValueError("no lr")

    def _load_optimizer_state(self, state):
        self.lr = state["lr"]

    @property
    def learning_rate(self):
        return self.lr


def _epochs(solver, iters):
    """The rows the solver trained on, grouped by epoch."""
    return [np.concatenate(solver.seen[e * iters:(e + 1) * iters]) for e in range(len(solver.seen) // iters)]


def test_every_epoch_visits_every_caption_once_in_a_new_order():
    solver = FakeSolver(_data(), num_epochs=4, batch_size=5, verbose=False, seed=1)
    solver.train()
    assert len(solver.seen) == 4 * 5 and [len(b) for b in solver.seen[:5]] == [5, 5, 5, 5, 3]
    epochs = _epochs(solver, 5)
    for rows in epochs:
        assert sorted(rows) == list(range(23))
    orders = {tuple(rows) for rows in epochs}
    assert len(orders) == 4 and tuple(range(23)) not in orders  # shuffled, and differently each epoch
    again = FakeSolver(_data(), num_epochs=4, batch_size=5, verbose=False, seed=1)
    again.train()
    assert all((a == b).all() for a, b in zip(again.seen, solver.seen))  # the seed fixes the order
    other = FakeSolver(_data(), num_epochs=1, batch_size=5, verbose=False, seed=2)
    other.train()
    assert not np.array_equal(_epochs(other, 5)[0], epochs[0])


def test_max_iters_cuts_every_epoch():
    solver = FakeSolver(_data(), num_epochs=3, batch_size=5, max_iters=2, verbose=False)
    history = solver.train()
    assert len(solver.seen) == 6 and len(history["loss"]) == 6 and len(history["train_loss"]) == 3


def test_history_records_each_iteration_and_epoch_means():
    losses = [4.0, 2.0, 3.0, 1.0, 0.5, 0.25]
    solver = FakeSolver(_data(num_train=12), train_losses=losses, num_epochs=2, batch_size=4, lr_decay=0.5,
                        verbose=False)
    history = solver.train()
    assert history["loss"] == losses
    assert history["train_loss"] == [3.0, 0.5833333333333334]
    assert history["learning_rate"] == [1.0, 0.5] and solver.lr == 0.25
    assert history["val_loss"] == [5.0, 5.0] and len(history["train_seconds"]) == 2


def test_validation_uses_a_fixed_seeded_subset_weighted_per_caption():
    values = np.arange(17, dtype=float) ** 2  # per-caption "loss" of each val row
    solver = FakeSolver(_data(), val_value=lambda row: values[row], num_epochs=2, batch_size=4, val_samples=10,
                        verbose=False, seed=3)
    rows = solver.val_rows
    assert len(rows) == 10 and len(set(rows.tolist())) == 10 and (np.diff(rows) > 0).all()
    history = solver.train()
    expected = values[rows].mean()  # batches of 4, 4, 2: a plain mean of batch means would differ
    assert history["val_loss"] == [pytest.approx(expected, rel=1e-12)] * 2
    assert not np.array_equal(rows, FakeSolver(_data(), val_samples=10, seed=4, verbose=False).val_rows)
    assert len(FakeSolver(_data(), val_samples=1000, verbose=False).val_rows) == 17


def test_callbacks_run_in_order_and_the_best_checkpoint_is_the_lowest_validation_loss(tmp_path):
    """Breaks caught: the callback before validation, state saved before the callback, a best
    epoch that is not the lowest validation loss, a best checkpoint written for other epochs."""
    script = iter([3.0, 1.0, 2.0, 0.5, 0.7])
    current, calls, written = {}, [], []
    best = BestCheckpoint(tmp_path / "best.npz", lambda model, path, info: written.append(info["epoch"]), {"run": 1})

    def on_epoch_end(solver, epoch):
        calls.append(("epoch", epoch, solver.history["val_loss"][-1]))
        best.on_epoch_end(solver, epoch)

    solver = FakeSolver(_data(), num_epochs=5, batch_size=23, verbose=False, on_epoch_end=on_epoch_end,
                        save_state=lambda s: calls.append(("save", s.epoch, s.iteration)))
    solver.val_loss = lambda: current.setdefault(len(solver.history["val_loss"]), next(script))
    solver.train()
    assert [c for c in calls if c[0] == "epoch"] == [("epoch", 1, 3.0), ("epoch", 2, 1.0), ("epoch", 3, 2.0),
                                                     ("epoch", 4, 0.5), ("epoch", 5, 0.7)]
    assert [c for c in calls if c[0] == "save"] == [("save", e, 0) for e in range(1, 6)]
    assert calls.index(("save", 1, 0)) == calls.index(("epoch", 1, 3.0)) + 1  # state saved after the callback
    assert written == [1, 2, 4] and best.best == {"run": 1, "epoch": 4, "val_loss": 0.5}
    assert best.describe() == "epoch 4, val loss 0.5000"
    again = BestCheckpoint(tmp_path / "best.npz", lambda *a: written.append("again"))
    again.load_state(best.state())  # a resumed run keeps the best so far: a worse epoch writes nothing
    solver.history["val_loss"].append(0.6)
    again.on_epoch_end(solver, 6)
    assert written[-1] == 4


@pytest.mark.parametrize("name", ["rnn", "transformer"])  # one model type of each backend
def test_both_solvers_decay_the_learning_rate_after_each_epoch(name, fake_coco):
    from core.data.coco_utils import load_coco_data

    data = load_coco_data(fake_coco, max_train=40)
    solver = tiny_solver(name, data, learning_rate=0.2, update_rule="sgd_momentum", num_epochs=3, batch_size=20,
                         lr_decay=0.5, val_samples=10, verbose=False)
    history = solver.train()
    assert history["learning_rate"] == [0.2, 0.1, 0.05]
    assert solver.learning_rate == pytest.approx(0.025, rel=1e-12)
    if MODEL_TYPES[name].uses_torch:  # what the optimizer reads
        assert [g["lr"] for g in solver.optimizer.param_groups] == [pytest.approx(0.025, rel=1e-12)]
    else:  # what the update rules read, one config per weight
        assert [c["learning_rate"] for c in solver.optim_configs.values()] == [pytest.approx(0.025, rel=1e-12)] * 8


def test_the_transformer_solver_moves_the_model_and_batches_to_its_device(fake_coco):
    """The "meta" device stands in for a GPU: it exists everywhere and keeps no data."""
    from core.data.coco_utils import load_coco_data

    data = load_coco_data(fake_coco, max_train=10)
    solver = TorchSolver(tiny_model("transformer", data), data, device="meta", verbose=False)
    assert {p.device.type for p in solver.model.parameters()} == {"meta"}
    features, captions = solver._tensors(np.zeros((2, 512), dtype=np.float32), np.zeros((2, 17), dtype=np.int32))
    assert features.device.type == captions.device.type == "meta"
    assert captions.dtype == torch.long


def test_keep_freed_memory_keeps_large_blocks_on_the_heap_and_changes_no_result():
    """In a fresh process a 16 MiB malloc is served by mmap (glibc's default threshold is 128 KiB);
    after keep_freed_memory() it comes from the heap, which is what makes its reuse cheap. A loss
    and its gradients are the same before and after it (it changes nothing but speed)."""
    code = """
import ctypes, json, sys
from core.util.memory import keep_freed_memory
libc = ctypes.CDLL("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
applied = keep_freed_memory() if sys.argv[1] == "on" else None
before = libc.mallinfo2().hblkhd
block = libc.malloc(16 << 20)
print(json.dumps({"applied": applied, "mmapped": libc.mallinfo2().hblkhd - before}))
"""
    results = {}
    for mode in ("off", "on"):
        result = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=60,
                                cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
        if result.returncode != 0:
            pytest.skip(f"no glibc mallinfo2 here: {result.stderr.strip().splitlines()[-1]}")
        results[mode] = json.loads(result.stdout)
    assert results["off"]["mmapped"] >= 16 << 20
    assert results["on"] == {"applied": True, "mmapped": 0}
    from core.util.memory import keep_freed_memory
    from core.model.rnn_model import CaptioningRNN

    rng = np.random.default_rng(4)
    features = rng.standard_normal((3, 6)).astype(np.float32)
    captions = np.array([[1, 4, 3, 2, 0], [1, 3, 3, 2, 0], [1, 4, 4, 3, 2]])
    model = CaptioningRNN(WORDS, input_dim=6, wordvec_dim=5, hidden_dim=4, cell_type="lstm", seed=0)
    before = model.loss(features, captions)
    assert keep_freed_memory() is True
    after = model.loss(features, captions)
    assert before[0] == after[0] and all(np.array_equal(before[1][k], after[1][k]) for k in before[1])


def test_a_stop_in_the_last_step_resumes_into_the_end_and_one_after_it_finishes():
    """Breaks caught: a stop during the last step of the run saved as "epoch done" (its validation
    and callbacks never run, and the printed resume command is refused as already trained), and a
    stop during the final validation or scoring reported as an interruption."""
    import os
    import signal

    saved = []
    solver = FakeSolver(_data(), num_epochs=2, batch_size=10, verbose=False,
                        save_state=lambda s: saved.append(s.training_state()))
    step = solver.gradients

    def step_then_signal(*batch, **kw):
        if len(solver.seen) == 5:  # epoch 2's third and last step (3 steps of 10, 10, 3 per epoch)
            signal.raise_signal(signal.SIGTERM)
        return step(*batch, **kw)

    solver.gradients = step_then_signal
    solver.train()
    assert solver.stop_requested == "SIGTERM" and (solver.epoch, solver.iteration) == (1, 3)
    assert len(solver.history["val_loss"]) == 1
    resumed = FakeSolver(_data(), num_epochs=2, batch_size=10, verbose=False)
    resumed.load_training_state(saved[-1])
    resumed.train()
    assert resumed.seen == [] and resumed.epoch == 2 and len(resumed.history["val_loss"]) == 2  # only the end ran

    def signal_while_scoring(solver, epoch):
        if epoch == 2:
            signal.raise_signal(signal.SIGINT)

    finishing = FakeSolver(_data(), num_epochs=2, batch_size=10, verbose=False, on_epoch_end=signal_while_scoring)
    finishing.train()
    assert finishing.stop_requested is None and finishing.epoch == 2  # the run is complete: no interruption


@pytest.mark.parametrize("every, first, total", [(2, 3, 5), (3, 2, 4)])
def test_eval_every_scores_and_chooses_as_a_straight_run_after_a_resume(every, first, total, tmp_path, monkeypatch):
    """Break caught: a run resumed for more epochs kept the score of its old last epoch, which a
    straight run never scores, so its history and its best checkpoint differed from a straight run."""
    import core.training.best

    cider = {1: 1.0, 2: 2.0, 3: 9.0, 4: 3.0, 5: 4.0}  # the old last epoch (3, or 2) would look best
    current = {}
    monkeypatch.setattr(core.training.best, "caption_split", lambda *a, **k: {"epoch": current["epoch"]})
    monkeypatch.setattr(core.training.best, "score_captions",
                        lambda predictions, refs, meteor: {"BLEU-4": 0.5, "CIDEr": cider[predictions["epoch"]]})
    data = dict(_data(), idx_to_word=["<NULL>", "<START>", "<END>"] + [f"w{i}" for i in range(30)])

    def run(epochs, tracker_state=None, loop_state=None):
        written = []
        best = core.training.best.BestCheckpoint(tmp_path / "b.npz", lambda m, p, info: written.append(info["epoch"]), {},
                                        data, eval_every=every, eval_images=3, final_epoch=epochs, verbose=False)
        saved = {}

        def on_epoch_end(solver, epoch):
            current["epoch"] = epoch
            best.on_epoch_end(solver, epoch)

        solver = FakeSolver(data, num_epochs=epochs, batch_size=23, verbose=False, on_epoch_end=on_epoch_end,
                            save_state=lambda s: saved.update(loop=s.training_state(), tracker=best.state()))
        if loop_state is not None:
            solver.load_training_state(loop_state)
            best.load_state(tracker_state)
        solver.train()
        return best, written, saved

    straight, straight_written, _ = run(total)
    _, _, saved = run(first)
    resumed, resumed_written, _ = run(total, saved["tracker"], saved["loop"])
    assert resumed.metrics == straight.metrics and resumed.best == straight.best
    assert resumed_written[-1] == straight_written[-1] == straight.best["epoch"]
    assert straight.metrics["eval_epoch"] == [e for e in range(1, total + 1) if e % every == 0] + [total]


def test_tensorboard_mirrors_each_epoch_once_with_global_iteration_steps():
    """Breaks caught: per-iteration scalars numbered from 0 in every epoch (curves overlapping), an
    epoch's iterations written twice, scores of an epoch that was not scored."""
    from core.training.tensorboard_log import TensorBoardLog

    class Writer:
        def __init__(self):
            self.scalars, self.flushes = [], 0

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

        def flush(self):
            self.flushes += 1

    class Scores:
        metrics = {"eval_epoch": [2], "val_bleu4": [0.5], "val_cider": [3.0]}

    writer = Writer()
    board = TensorBoardLog(writer, Scores())
    solver = FakeSolver(_data(), train_losses=[4.0, 3.0, 2.0, 1.0], num_epochs=2, batch_size=12, verbose=False,
                        on_epoch_end=board.on_epoch_end)
    solver.train()
    assert [s for s in writer.scalars if s[0] == "iteration/loss"] == [
        ("iteration/loss", 4.0, 1), ("iteration/loss", 3.0, 2), ("iteration/loss", 2.0, 3), ("iteration/loss", 1.0, 4)]
    assert [s for s in writer.scalars if s[0] == "epoch/train_loss"] == [("epoch/train_loss", 3.5, 1),
                                                                         ("epoch/train_loss", 1.5, 2)]
    assert [s for s in writer.scalars if "val_" in s[0] and "loss" not in s[0]] == [("epoch/val_bleu4", 0.5, 2),
                                                                                   ("epoch/val_cider", 3.0, 2)]
    assert writer.flushes == 2


def test_tensorboard_without_the_package_is_one_note(fake_coco, tmp_path, capsys, monkeypatch):
    import training

    import core.training.tensorboard_log

    monkeypatch.setattr(core.training.tensorboard_log, "summary_writer", lambda log_dir: None)  # as without the tensorboard package
    training.main(["--model", "rnn", "--data_dir", str(fake_coco), "--hidden_dim", "8", "--wordvec_dim", "8",
                   "--epochs", "1", "--max_iters", "1", "--quiet", "--checkpoint", str(tmp_path / "r.npz"),
                   "--out_dir", str(tmp_path), "--tensorboard", str(tmp_path / "tb")])
    out = capsys.readouterr().out
    assert out.count("note: --tensorboard needs the tensorboard package") == 1
    assert (tmp_path / "r_history.json").is_file() and not (tmp_path / "tb").exists()


def test_threads_limit_numpys_blas_and_torch(fake_coco, tmp_path, monkeypatch):
    """Breaks caught: --threads not reaching the libraries (numpy's BLAS kept one thread per core,
    the oversubscription that made the LSTM 1.7x slower on a busy machine), or not passed on."""
    import threadpoolctl

    import training
    from core.util.cli import limit_threads

    before = torch.get_num_threads()
    limiter = limit_threads(1)
    try:
        assert torch.get_num_threads() == 1
        assert {pool["num_threads"] for pool in threadpoolctl.threadpool_info()
                if pool["user_api"] == "blas"} == {1}
    finally:
        limiter.restore_original_limits()
        torch.set_num_threads(before)
    assert limit_threads(None) is None
    asked = []
    monkeypatch.setattr(run_module, "limit_threads", asked.append)
    training.main(["--model", "rnn", "--data_dir", str(fake_coco), "--hidden_dim", "8", "--wordvec_dim", "8",
                   "--epochs", "1", "--max_iters", "1", "--quiet", "--threads", "1", "--checkpoint",
                   str(tmp_path / "r.npz"), "--out_dir", str(tmp_path)])
    assert asked == [1]


def test_help_groups_every_flag_once():
    """Break caught: a flag added to FLAGS but to no --help group (argparse would then not know it),
    or to two."""
    from core.training.config import FLAGS, GROUPS, build_parser

    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in FLAGS)
    text = build_parser().format_help()
    positions = [text.index(f"\n{title}:") for title in GROUPS]
    assert positions == sorted(positions)


@pytest.mark.parametrize("eval_every", [0, 1])
def test_early_stopping_after_patience_epochs_without_a_better_score(eval_every, tmp_path, monkeypatch):
    """Breaks caught: --patience ignored (all 10 epochs trained), counted from the run's start
    instead of the best epoch, or by epochs rather than scored epochs with --eval_every."""
    import core.training.best
    from core.training.best import BestCheckpoint

    val = iter([5.0, 4.0, 4.5, 3.9, 4.2, 4.3, 4.4, 4.5, 4.6, 4.7])
    cider = {1: 0.1, 2: 0.3, 3: 0.2, 4: 0.4, 5: 0.35, 6: 0.3, 7: 0.2, 8: 0.1, 9: 0.1, 10: 0.1}
    monkeypatch.setattr(core.training.best, "caption_split", lambda model, data, split, **k: {"epoch": 0})
    data = dict(_data(), idx_to_word=["<NULL>", "<START>", "<END>"] + [f"w{i}" for i in range(30)])
    best = BestCheckpoint(tmp_path / "best.npz", lambda *a: None, data=data, eval_every=eval_every,
                          eval_images=2, final_epoch=10, verbose=False)
    monkeypatch.setattr(core.training.best, "score_captions",
                        lambda predictions, refs, meteor: {"BLEU-4": 0.5,
                                                           "CIDEr": cider[len(best.metrics["eval_epoch"]) + 1]})
    solver = FakeSolver(data, num_epochs=10, batch_size=10, verbose=False, on_epoch_end=best.on_epoch_end,
                        stop_early=best.patience_rule(2))
    solver.val_loss = lambda: next(val)
    solver.train()
    assert solver.epoch == 6 and len(solver.history["val_loss"]) == 6  # best at 4, then 5 and 6 not better
    assert solver.stopped_early.startswith("2 ") and "(epoch 4)" in solver.stopped_early


def test_a_run_stopped_early_records_the_epochs_it_trained(fake_coco, tmp_path, monkeypatch):
    """Break caught: the final checkpoint saying --epochs (10) after --patience stopped it at 2."""
    import training
    from core.model.checkpoint import load_checkpoint
    from core.training.best import BestCheckpoint

    monkeypatch.setattr(BestCheckpoint, "patience_rule",
                        lambda self, patience: lambda solver: "test" if solver.epoch == 2 else None)
    training.main(["--model", "rnn", "--data_dir", str(fake_coco), "--hidden_dim", "8", "--wordvec_dim", "8",
                   "--epochs", "10", "--max_iters", "1", "--patience", "1", "--quiet", "--checkpoint",
                   str(tmp_path / "r.npz"), "--out_dir", str(tmp_path)])
    _, config = load_checkpoint(tmp_path / "r.npz")
    assert config["extra"]["epoch"] == 2


def test_scheduled_sampling_feeds_the_models_own_words_at_the_scheduled_rate():
    """Breaks caught: scheduled sampling ignored (the inputs always the ground truth), <START> or
    <NULL> positions replaced, the probability not rising by P / ramp an epoch to P, draws
    depending on the batch instead of the caption row."""
    from core.model.rnn_model import CaptioningRNN
    from core.training.steps import CrossEntropy

    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "cat": 3, "dog": 4}
    model = CaptioningRNN(vocab, input_dim=3, wordvec_dim=4, hidden_dim=5, cell_type="lstm", seed=0)
    model.params["b_vocab"][:] = [-50, -50, -50, 50, -50]  # every sampled word is "cat"
    captions = np.array([[1, 4, 4, 4, 2, 0], [1, 4, 2, 0, 0, 0]])
    features = np.zeros((2, 3), np.float32)
    rule = CrossEntropy(scheduled_sampling=0.5, seed=3, ramp=4)
    assert [rule.sampling_probability(e) for e in range(6)] == [0.125, 0.25, 0.375, 0.5, 0.5, 0.5]
    always = rule.mixed_inputs(model, features, captions, np.array([7, 8]), 1.0, epoch=0)
    np.testing.assert_array_equal(always, [[1, 3, 3, 3, 3], [1, 3, 3, 0, 0]])  # targets <NULL> stay
    np.testing.assert_array_equal(rule.mixed_inputs(model, features, captions, np.array([7, 8]), 0.0, 0),
                                  captions[:, :-1])
    half = rule.mixed_inputs(model, features, captions, np.array([7, 8]), 0.5, epoch=2)
    swapped = rule.mixed_inputs(model, features, captions[::-1], np.array([8, 7]), 0.5, epoch=2)
    np.testing.assert_array_equal(swapped[::-1], half)  # each caption row's own draws
    seen = []
    loss = model.loss
    model.loss = lambda *a, **k: (seen.append(k.get("inputs")), loss(*a, **k))[1]
    data = {"train_captions": captions, "train_image_idxs": np.array([0, 1]), "train_features": np.zeros((2, 3)),
            "val_captions": captions, "val_image_idxs": np.array([0, 1]), "val_features": np.zeros((2, 3))}
    from core.training.solver_numpy import NumpySolver

    NumpySolver(model, data, num_epochs=1, batch_size=2, val_samples=2, verbose=False,
                step=CrossEntropy(scheduled_sampling=1.0, ramp=1)).train()
    train_steps = seen[0::2]  # each epoch: one training step, then the validation loss (plain)
    assert seen[1::2] == [None]  # the validation loss is plain
    assert (train_steps[0][:, 1] == 3).all()  # one epoch of ramp 1: every input the model's


def test_the_scheduled_sampling_schedule_survives_a_resume_with_more_epochs(fake_coco, tmp_path):
    """The probability depends on the epoch alone. Breaks caught: a schedule over --epochs (it
    sampled nothing with --epochs 1, and raising --epochs on resume changed the rate mid-run)."""
    import training
    from core.training import steps

    seen = []
    original = steps.CrossEntropy.mixed_inputs

    def spy(self, model, features, captions, rows, probability, epoch):
        seen.append((epoch, probability))
        return original(self, model, features, captions, rows, probability, epoch)

    flags = ["--data_dir", str(fake_coco), "--hidden_dim", "8", "--wordvec_dim", "8", "--max_iters",
             "1", "--quiet", "--checkpoint", str(tmp_path / "s.npz"), "--out_dir", str(tmp_path)]
    steps.CrossEntropy.mixed_inputs = spy
    try:
        training.main(["--model", "lstm", *flags, "--epochs", "1", "--scheduled_sampling", "0.4",
                       "--scheduled_sampling_ramp", "2"])
        training.main(["--resume", str(tmp_path / "s_last.npz"), "--epochs", "3", "--quiet"])
    finally:
        steps.CrossEntropy.mixed_inputs = original
    assert seen == [(0, 0.2), (1, 0.4), (2, 0.4)]


def test_the_progress_bar_is_drawn_on_a_terminal_only(monkeypatch, capsys):
    """Break caught: hundreds of progress-bar chunks in the notebook's output (and in logs), where
    stderr is no terminal; the per-epoch lines stay."""
    import io
    import sys

    data = dict(_data(), idx_to_word=["<NULL>", "<START>", "<END>"] + [f"w{i}" for i in range(30)])
    for terminal in (False, True):
        stream = io.StringIO()
        stream.isatty = lambda terminal=terminal: terminal
        monkeypatch.setattr(sys, "stderr", stream)
        FakeSolver(data, num_epochs=1, batch_size=10, verbose=True).train()
        assert ("epoch 1/1" in stream.getvalue()) == terminal  # the bar's description
    assert "train loss" in capsys.readouterr().out  # the epoch's line, either way


def test_every_flag_of_the_three_scripts_is_in_the_docs():
    """Each flag table's rows appear in README.md or docs/ (break caught: --update_rule, --quiet,
    --temperature and --max_length documented only in --help)."""
    from pathlib import Path

    import features_extraction
    from core.evaluation.settings import FLAGS as INFERENCE
    from core.training.flags import FLAGS as TRAINING

    root = Path(__file__).resolve().parents[1]
    docs = "\n".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    for script, flags in (("training.py", TRAINING), ("inference.py", INFERENCE),
                          ("features_extraction.py", features_extraction.FLAGS)):
        missing = [f"--{f.name}" for f in flags if f"--{f.name}" not in docs]
        assert not missing, f"{script}: {missing}"
