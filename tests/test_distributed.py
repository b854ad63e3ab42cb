"""torchrun on the CPU (gloo, 2 processes on 127.0.0.1): data-parallel training of every decoder
(cross-entropy and self-critical),
rank-0-only output, resume, and sharded --eval, each against one process."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.model.checkpoint import load_checkpoint, save_training_state
from core.training.state import load_training_state
from core.evaluation.cider import CiderD
from core.data.coco_utils import load_coco_data
from core.datasets.make_fake_coco import write_fake_coco
from core.evaluation.metrics import references_by_image
from core.model.registry import MODEL_TYPES
from core.training.config import resumed_batch_size
from core.training.steps import SelfCritical
from tests.helpers import DECODERS, rel_error, tiny_solver, weights

pytestmark = pytest.mark.slow  # subprocesses, torchrun or VGG16 throughout

ROOT = Path(__file__).resolve().parents[1]
BATCH, STEPS = 25, 3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, cwd):
    """python -m torch.distributed.run with 2 processes on this machine only."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=240)


def make_solver(name, data, batch_size, dist=None, scst=False):
    """A tiny model of `name` (dropout 0, fixed seeds) and its solver for STEPS steps of one epoch;
    scst: self-critical training (3 samples per image, greedy baseline) instead of cross-entropy."""
    step = None
    if scst:
        refs = references_by_image(data["train_captions"], data["train_image_idxs"], data["idx_to_word"])
        step = SelfCritical(CiderD(refs), num_samples=3, max_length=8, seed=5)
    # plain SGD for the numpy models: its steps scale with the gradient, so a wrongly averaged one shows
    lr = 1e-3 if MODEL_TYPES[name].uses_torch else 0.2
    return tiny_solver(name, data, learning_rate=lr, update_rule="sgd", num_epochs=1, batch_size=batch_size,
                       max_iters=STEPS, val_samples=20, seed=5, verbose=False, dist=dist, step=step)


# (model type, its kind of features, self-critical): every decoder over every kind it reads, three self-critically
CASES = [(name, kind, False) for name, kind in DECODERS] + [("rnn", "fc7", True), ("transformer", "fc7", True),
                                                             ("updown", "boxes", True)]


def test_two_processes_of_batch_b_train_as_one_of_batch_2b(fake_coco, tmp_path):
    """Every decoder, by cross-entropy and (rnn, transformer, box updown) self-critically: the same weights and
    losses as one process with twice the batch, and identical weights on both ranks after every
    step. Breaks caught: gradients summed instead of averaged, a rank training on the other's
    slice, self-critical images sampled on both ranks or with the same draws for different images."""
    out = tmp_path / "two.npz"
    result = torchrun(ROOT / "tests" / "dist_worker.py", fake_coco, out, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    data = {kind: load_coco_data(fake_coco, features=kind) for kind in ("fc7", "grid", "boxes")}
    with np.load(out) as two:
        assert list(two["mismatches"]) == []
        for name, kind, scst in CASES:
            case = f"{name}-{kind}{'_scst' if scst else ''}"
            solver = make_solver(name, data[kind], 2 * BATCH, scst=scst)
            solver.train()
            np.testing.assert_allclose(two[f"{case}.loss"], solver.history["loss"], rtol=1e-5, atol=1e-7)
            if scst:
                np.testing.assert_allclose(two[f"{case}.reward"], solver.history["reward"], rtol=1e-6)
            for k, v in weights(solver.model).items():
                np.testing.assert_allclose(two[f"{case}.{k}"], v, rtol=1e-5, atol=1e-6, err_msg=f"{case} {k}")


def test_the_script_under_torchrun_writes_once_resumes_and_loads_in_one_process(fake_coco, tmp_path, capsys,
                                                                              monkeypatch):
    """A transformer trained under torchrun (rank 0 alone prints and writes, behind the checkpoint's
    lock), resumed under torchrun, equals one process with twice the batch; its file has no DDP
    `module.` prefixes."""
    common = ["--data_dir", fake_coco, "--wordvec_dim", 8, "--num_heads", 2, "--dim_feedforward", 16, "--dropout", 0,
              "--val_samples", 20, "--lr_decay", 0.5, "--max_iters", 3]
    script = ROOT / "training.py"
    two = torchrun(script, "--model", "transformer", *common, "--batch_size", BATCH, "--epochs", 1,
                   "--checkpoint", "d.pt", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("loaded ") == 1 and two.stdout.count("saved checkpoint") == 1
    assert "for 1 epoch on cpu (batch 25 per process x 2 processes = 50 captions per step)" in two.stdout
    assert "iterations per second (batch 25 per process x 2 processes = 50 captions per step)" in two.stdout
    (tmp_path / "alone").mkdir()
    shutil.copy(tmp_path / "d_last.pt", tmp_path / "alone" / "d_last.pt")
    resumed = torchrun(script, "--resume", "d_last.pt", "--epochs", 2, "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    import training  # the one-process runs in-process

    monkeypatch.chdir(tmp_path / "alone")
    training.main(["--resume", "d_last.pt", "--epochs", "2"])  # the torchrun file in one process: 50 per step
    assert ("resuming a run of 2 process(es) x batch 25 on 1 process(es): batch 50 per process, the same 50 "
            "captions per step") in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    training.main(["--model", "transformer", *map(str, common), "--batch_size", str(2 * BATCH), "--epochs", "2",
                   "--checkpoint", "s.pt", "--quiet"])
    b = load_checkpoint(tmp_path / "s.pt")[0]
    for a in (load_checkpoint(tmp_path / "d.pt")[0], load_checkpoint(tmp_path / "alone" / "d.pt")[0]):
        for k, v in a.state_dict().items():
            np.testing.assert_allclose(v.numpy(), b.state_dict()[k].numpy(), rtol=1e-4, atol=2e-5, err_msg=k)
    assert not any(k.startswith("module.") for k in torch.load(tmp_path / "d.pt", weights_only=True)["state_dict"])
    history = json.loads((tmp_path / "outputs" / "d_history.json").read_text())
    assert history["learning_rate"] == [1e-3, 5e-4]  # the second epoch ran after the resume
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["d.pt", "d_best.pt", "d_last.pt", "s.pt", "s_best.pt",
                                                             "s_last.pt"]
    assert not list(tmp_path.glob(".*"))  # no lock or temporary files left


def test_eval_on_two_processes_equals_one(fake_coco, tmp_path, monkeypatch):
    import inference
    import training

    monkeypatch.chdir(tmp_path)  # the one-process runs in-process, the two-process one under torchrun
    training.main(["--model", "rnn", "--data_dir", str(fake_coco), "--hidden_dim", "12", "--wordvec_dim", "8",
                   "--epochs", "1", "--quiet"])
    args = ["--model", "rnn", "--data_dir", fake_coco, "--eval", "--beam_size", 2]
    inference.main([*map(str, args), "--out_dir", "one"])
    two = torchrun(ROOT / "inference.py", *args, "--out_dir", "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("saved scores") == 1
    a, b = (json.loads((tmp_path / d / "rnn_checkpoint_val_beam2_eval.json").read_text()) for d in ("one", "two"))
    assert a["predictions"] == b["predictions"] and a["scores"] == b["scores"] and len(a["predictions"]) == 20


def resume_solver(data, batch_size, dist=None, **kwargs):
    """A tiny rnn trained by plain SGD for 2 epochs of 60 captions (3 to 6 steps per epoch)."""
    return tiny_solver("rnn", data, learning_rate=0.2, update_rule="sgd", num_epochs=2, batch_size=batch_size,
                       val_samples=20, seed=7, verbose=False, dist=dist, **kwargs)


def test_a_mid_epoch_state_resumes_on_another_number_of_processes(tmp_path):
    """2 processes x batch 10 stopped mid-epoch, resumed in 1 process x batch 20, and 1 process x batch
    20 stopped mid-epoch, resumed on 2 processes x batch 10, both equal a straight run of batch 20:
    every caption of the interrupted epoch is trained once, in steps of the same 20. Break caught:
    the per-process batch kept on another number of processes (the step halves or doubles, so the
    rest of the run differs from a straight one)."""
    small = write_fake_coco(tmp_path / "small", train_images=12, val_images=4, seed=1)  # 60 captions
    data = load_coco_data(small)
    straight = resume_solver(data, 20)
    straight.train()
    worker = ROOT / "tests" / "resume_worker.py"

    stopped = torchrun(worker, "stop", small, 10, 2, tmp_path / "two_last.npz", cwd=ROOT)  # after 2 of 3 steps
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    model, config, state = load_training_state(tmp_path / "two_last.npz")
    assert (state.position, state.world_size, state.iteration) == (40, 2, 2)
    batch, note = resumed_batch_size(10, state.world_size, 1)  # as training.py --resume maps it
    assert batch == 20 and note.endswith("batch 20 per process, the same 20 captions per step")
    alone = resume_solver(data, batch, model=model)
    alone.load_training_state(state)
    alone.train()

    first = resume_solver(data, 20, save_state=lambda s: save_training_state(s, tmp_path / "one_last.npz"))
    gradients = first.gradients
    first.gradients = lambda *batch, **kw: (signal.raise_signal(signal.SIGTERM), gradients(*batch, **kw))[1]
    first.train()  # stops after its first step: position 20 of 60
    assert load_training_state(tmp_path / "one_last.npz")[2].position == 20
    batch, _ = resumed_batch_size(20, 1, 2)
    resumed = torchrun(worker, "resume", small, batch, tmp_path / "one_last.npz", tmp_path / "two.npz", cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with np.load(tmp_path / "two.npz") as two:
        for run in (weights(alone.model), {k: two[k] for k in two.files if k != "loss"}):
            for k, v in weights(straight.model).items():
                assert rel_error(run[k], v) < 1e-4, k  # normwise: float rounding of the averaged gradients
        np.testing.assert_allclose(two["loss"], straight.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(alone.history["loss"], straight.history["loss"], rtol=1e-5)


def _script_errors(stderr, prog="training.py"):
    """The lines our script wrote to stderr (torchrun adds its own failure report after them)."""
    return [line for line in stderr.splitlines() if line.startswith(f"{prog}:")]


def test_a_bad_flag_is_printed_by_rank_0_alone(capsys, monkeypatch):
    """Break caught: an argparse error printed by every rank under torchrun."""
    import training

    for rank, printed in (("1", []), ("0", ["training.py: error: --lr must be positive and finite, got -1.0 "
                                             "(see --help)"])):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as e:
            training.main(["--model", "rnn", "--lr", "-1"])
        assert e.value.code == 2 and capsys.readouterr().err.splitlines() == printed


def test_errors_are_printed_once_whichever_rank_meets_them(fake_coco, tmp_path):
    """Breaks caught: an error that only rank 1 meets never printed (rank 0 then died in a gloo
    traceback); rank 0's refused lock leaving rank 1 to train on."""
    flags = ["--model", "rnn", "--data_dir", fake_coco, "--hidden_dim", 8, "--wordvec_dim", 8, "--epochs", 1,
             "--checkpoint", tmp_path / "r.npz", "--out_dir", tmp_path]
    missing = torchrun(ROOT / "tests" / "rank_worker.py", 1, *flags, cwd=tmp_path)
    assert missing.returncode != 0
    assert _script_errors(missing.stderr) == ["training.py: error: on rank 1 of 2: data directory "
                                              "/nonexistent/on-this-machine not found: check --data_dir"]
    assert "training.py\", line" not in missing.stderr and "Connection closed" not in missing.stderr

    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               str(tmp_path / ".r.npz.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        locked = torchrun(ROOT / "training.py", *flags, cwd=tmp_path)
    finally:
        holder.kill()
    errors = _script_errors(locked.stderr)
    assert len(errors) == 1 and errors[0].startswith("training.py: error: on rank 0 of 2: another training run")
    assert "epoch 1/1" not in locked.stdout and "training.py\", line" not in locked.stderr


def test_an_error_only_rank_1_meets_mid_training_is_said_once(tmp_path):
    """Break caught: rank 1's UserError mid-training (a NaN row only its share of the batch reads)
    never printed, rank 0 left in a collective: ~74 lines of gloo "Connection reset by peer" and
    torchrun's ChildFailedError, no cause."""
    small = write_fake_coco(tmp_path / "small", train_images=12, val_images=4, seed=1)
    result = torchrun(ROOT / "tests" / "rank_error_worker.py", small, cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if "rank_error_worker.py: error" in line]
    assert result.returncode != 0 and lines == [
        "rank_error_worker.py: error: on rank 1 of 2: train2014_vgg16_boxes_pca.h5: feature row 7 holds "
        "NaN or inf values"], result.stderr[-2000:]
    assert 'rank_error_worker.py", line' not in result.stderr  # no traceback of the workers' own
