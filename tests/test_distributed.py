"""torchrun on the CPU (gloo, 2 processes on 127.0.0.1): data-parallel training of every decoder,
rank-0-only output, resume, and sharded --eval, each against one process."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.checkpoint import load_checkpoint
from core.coco_utils import load_coco_data

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


def make_solver(name, data, batch_size, dist=None):
    """A tiny model of `name` (dropout 0, fixed seeds) and its solver for STEPS steps of one epoch."""
    from core.registry import MODEL_TYPES

    kind = MODEL_TYPES[name]
    config = {"model": name, "input_dim": 512, "wordvec_dim": 8, "hidden_dim": 12, "num_heads": 2, "num_layers": 1,
              "dim_feedforward": 16, "dropout": 0.0, "max_length": 20, "idx_to_word": data["idx_to_word"]}
    model = kind.model_class.from_config(config, seed=0)
    # plain SGD for the numpy models: its steps scale with the gradient, so a wrongly averaged one shows
    options = {"learning_rate": 1e-3} if kind.uses_torch else {"learning_rate": 0.2, "update_rule": "sgd"}
    return kind.solver_class(model, data, num_epochs=1, batch_size=batch_size, max_iters=STEPS, val_samples=20,
                             seed=5, verbose=False, dist=dist, **options)


def weights(model):
    """name -> float32 numpy copy of every weight."""
    if hasattr(model, "params"):
        return {k: v.copy() for k, v in model.params.items()}
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def test_two_processes_of_batch_b_train_as_one_of_batch_2b(fake_coco, tmp_path):
    """rnn, lstm, transformer: the same weights (and losses) as one process with twice the batch,
    and identical weights on both ranks after every step."""
    out = tmp_path / "two.npz"
    result = torchrun(ROOT / "tests" / "dist_worker.py", fake_coco, out, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    data = load_coco_data(fake_coco)
    with np.load(out) as two:
        assert list(two["mismatches"]) == []
        for name in ("rnn", "lstm", "transformer"):
            solver = make_solver(name, data, 2 * BATCH)
            solver.train()
            np.testing.assert_allclose(two[f"{name}.loss"], solver.history["loss"], rtol=1e-5)
            for k, v in weights(solver.model).items():
                np.testing.assert_allclose(two[f"{name}.{k}"], v, rtol=1e-5, atol=1e-6, err_msg=f"{name} {k}")


def test_the_script_under_torchrun_writes_once_resumes_and_loads_in_one_process(fake_coco, tmp_path):
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
    assert "batch 25 per process x 2 processes = 50 captions per step" in two.stdout
    resumed = torchrun(script, "--resume", "d_last.pt", "--epochs", 2, "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), "--model", "transformer", *map(str, common), "--batch_size",
                          str(2 * BATCH), "--epochs", "2", "--checkpoint", "s.pt", "--quiet"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    a, b = load_checkpoint(tmp_path / "d.pt")[0], load_checkpoint(tmp_path / "s.pt")[0]
    for k, v in a.state_dict().items():
        np.testing.assert_allclose(v.numpy(), b.state_dict()[k].numpy(), rtol=1e-4, atol=2e-5, err_msg=k)
    assert not any(k.startswith("module.") for k in torch.load(tmp_path / "d.pt", weights_only=True)["state_dict"])
    history = json.loads((tmp_path / "outputs" / "transformer_history.json").read_text())
    assert history["learning_rate"] == [1e-3, 5e-4]  # the second epoch ran after the resume
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["d.pt", "d_best.pt", "d_last.pt", "s.pt", "s_best.pt",
                                                             "s_last.pt"]
    assert not list(tmp_path.glob(".*"))  # no lock or temporary files left


def test_eval_on_two_processes_equals_one(fake_coco, tmp_path):
    train = subprocess.run([sys.executable, str(ROOT / "training.py"), "--model", "rnn", "--data_dir", str(fake_coco),
                            "--hidden_dim", "12", "--wordvec_dim", "8", "--epochs", "1", "--quiet"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert train.returncode == 0, train.stderr
    args = ["--model", "rnn", "--data_dir", fake_coco, "--eval", "--beam_size", 2]
    one = subprocess.run([sys.executable, str(ROOT / "inference.py"), *map(str, args), "--out_dir", "one"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    two = torchrun(ROOT / "inference.py", *args, "--out_dir", "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("saved scores") == 1
    a, b = (json.loads((tmp_path / d / "rnn_val_eval.json").read_text()) for d in ("one", "two"))
    assert a["predictions"] == b["predictions"] and a["scores"] == b["scores"] and len(a["predictions"]) == 20
