"""Faults and bad inputs: each is a one-line error (exit 2) or a clean stop, and good files survive."""
import argparse
import dataclasses
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import inference
import core.training.run as run_module
import training
from core.model.checkpoint import load_checkpoint, save_checkpoint
from core.training.state import load_training_state
from core.util.cli import out_of_memory_errors
from core.data.coco_utils import load_coco_data
from core.util.errors import UserError
from core.util.fileio import atomic_write_text
from core.model.rnn_model import CaptioningRNN
from core.model.transformer import CaptioningTransformer
from core.model.registry import MODEL_TYPES
from tests.helpers import one_line_error

ROOT = Path(__file__).resolve().parents[1]
SIZES = ["--hidden_dim", "12", "--wordvec_dim", "8", "--num_heads", "2", "--dim_feedforward", "16", "--batch_size", "50",
         "--val_samples", "40"]
TINY = [*SIZES, "--quiet"]


def train(tmp_path, data_dir, *args):
    return training.main(["--data_dir", str(data_dir), *TINY, "--checkpoint", str(tmp_path / "r.npz"),
                          "--out_dir", str(tmp_path / "out"), *map(str, args)])


def _history(path):
    history = json.loads(path.read_text())
    return {k: v for k, v in history.items() if k not in ("train_seconds", "seconds", "checkpoint_path")}


def test_resume_through_the_script_equals_a_straight_run(fake_coco, tmp_path, capsys):
    """training.py --resume: flags read from the file, --epochs raised, same weights and history as a
    straight run; contradicting flags and an unraised --epochs are one-line errors."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(straight, fake_coco, "--model", "lstm", "--epochs", 4)
    train(split, fake_coco, "--model", "lstm", "--epochs", 2)
    last = split / "r_last.npz"
    assert last.is_file()
    capsys.readouterr()
    one_line_error(capsys, lambda: training.main(["--resume", str(last), "--hidden_dim", "64"]),
                   "--hidden_dim 64 contradicts", "--hidden_dim 12")
    one_line_error(capsys, lambda: training.main(["--resume", str(last)]), "already trained 2 of its 2 epochs",
                   "--epochs larger than 2")
    one_line_error(capsys, lambda: training.main(["--resume", str(split / "r.npz"), "--epochs", "4"]),
                   "no training state")
    training.main(["--resume", str(last), "--epochs", "4", "--out_dir", str(split / "out")])
    assert "resuming" in capsys.readouterr().out
    a, b = load_checkpoint(straight / "r.npz")[0], load_checkpoint(split / "r.npz")[0]
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)
    assert _history(straight / "out" / "r_history.json") == _history(split / "out" / "r_history.json")


def _start(args, cwd):
    return subprocess.Popen([sys.executable, "-u", str(ROOT / "training.py"), *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_training(proc):
    """Read the script's output until its first epoch has ended (it must not be --quiet)."""
    for line in proc.stdout:
        if line.startswith("epoch 1/"):
            return
    proc.kill()
    raise AssertionError(f"training never started: {proc.stderr.read()}")


@pytest.mark.slow
def test_a_signal_stops_the_script_cleanly_and_it_resumes(fake_coco, tmp_path):
    """The script's side of a clean stop (exit code, last line, the printed resume command equal to a
    straight run); both signals and exact mid-epoch positions are tested in-process in test_resume.py."""
    signum = signal.SIGINT
    args = ["--model", "rnn", "--data_dir", fake_coco, *SIZES, "--checkpoint", "r.npz"]
    proc = _start([*args, "--epochs", 100000, "--lr_decay", 1], tmp_path)
    _wait_for_training(proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last_line = out.strip().splitlines()[-1]
    assert last_line.startswith("interrupted at epoch ") and last_line.endswith(
        "continue with: python training.py --resume r_last.npz"), last_line
    epoch = int(last_line.split()[3].rstrip(","))
    resumed = subprocess.run([sys.executable, str(ROOT / "training.py"), "--resume", "r_last.npz", "--epochs", str(epoch)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    straight = subprocess.run([sys.executable, str(ROOT / "training.py"), *map(str, args), "--epochs", str(epoch),
                               "--lr_decay", "1", "--checkpoint", "s.npz"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
    assert straight.returncode == 0, straight.stderr
    a, b = load_checkpoint(tmp_path / "r.npz")[0], load_checkpoint(tmp_path / "s.npz")[0]
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once_keeping_the_good_files(fake_coco, tmp_path):
    proc = _start(["--model", "rnn", "--data_dir", fake_coco, *SIZES, "--epochs", 100000, "--checkpoint", "r.npz"],
                  tmp_path)
    _wait_for_training(proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 1
    load_training_state(tmp_path / "r_last.npz")  # the last good state is intact
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_divergence_is_an_error_and_writes_nothing(fake_coco, tmp_path, capsys):
    """A huge learning rate through the script: the one-line error, and no file of the diverged run
    (the loop's divergence rules are tested in-process in test_resume.py)."""
    one_line_error(capsys, lambda: train(tmp_path, fake_coco, "--model", "rnn", "--lr", "1e6"),
                   "more than 10 times the first batch loss", "lower --lr", "no checkpoint was written")
    assert not (tmp_path / "r.npz").exists() and not (tmp_path / "r_best.npz").exists()
    assert not (tmp_path / "out").exists()
    # a huge weight decay: the advice names it (break caught: "lower --lr" alone)
    one_line_error(capsys, lambda: train(tmp_path, fake_coco, "--model", "rnn", "--weight_decay", "1e308"),
                   "lower --lr, or check --weight_decay 1e+308")


@pytest.mark.parametrize("flag, value", [("--lr", "-1"), ("--lr", "0"), ("--lr", "nan"), ("--lr", "inf"),
                                         ("--lr_decay", "0"), ("--lr_decay", "-0.5"), ("--lr_decay", "inf"),
                                         ("--divergence_factor", "0")])
def test_learning_rates_must_be_positive_and_finite(flag, value, capsys):
    one_line_error(capsys, lambda: training.main(["--model", "rnn", flag, value]), f"{flag} must be positive and finite")


@pytest.mark.parametrize("flag, value, message", [
    ("--seed", "-1", "--seed must be nonnegative, got -1"),
    ("--temperature", "nan", "--temperature must be nonnegative and finite, got nan"),
    ("--alpha_c", "inf", "--alpha_c must be nonnegative and finite, got inf"),
    ("--dropout", "nan", "--dropout must be in [0, 1), got nan")])
def test_every_flag_is_checked_before_the_data_is_read(flag, value, message, capsys, monkeypatch):
    """Breaks caught: --seed -1 accepted and failing after the data loaded (blamed on the model sizes
    for an rnn, a raw ValueError for a transformer); a float flag given nan or inf accepted."""
    import core.training.config as config

    monkeypatch.setattr(config, "count_training_captions", lambda d: pytest.fail("the data was read"))
    one_line_error(capsys, lambda: training.main(["--model", "rnn", flag, value]), message)


@pytest.mark.parametrize("model, flags", [("rnn", ["--hidden_dim", "1000000"]),
                                          ("transformer", ["--wordvec_dim", "1000000", "--num_heads", "2"])])
def test_a_model_too_large_for_memory_is_a_one_line_error(fake_coco, tmp_path, capsys, model, flags):
    one_line_error(capsys, lambda: training.main(["--model", model, "--data_dir", str(fake_coco), *flags,
                                                  "--checkpoint", str(tmp_path / "m.npz")]),
                   "GiB", "this machine has")


@pytest.mark.parametrize("name", list(MODEL_TYPES))
def test_parameter_counts_match_the_built_models(name):
    """Breaks caught: a weight the count forgets (the GRU's extra bias), or one it counts that never
    trains (the transformer's cross-attention query and key, over a single memory token)."""
    config = {"model": name, "input_dim": 7, "wordvec_dim": 8, "hidden_dim": 5, "num_heads": 2, "num_layers": 3,
              "max_length": 20, "dim_feedforward": 6, "dropout": 0.0, "attention_dim": 3, "num_regions": 4,
              "alpha_c": 1.0, "idx_to_word": ["<NULL>", "<START>", "<END>", "a"]}
    kind = MODEL_TYPES[name]
    model = kind.model_class.from_config(config)
    if kind.uses_torch:
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    else:
        trained = sum(v.size for v in model.state_arrays().values())
    assert kind.model_class.count_parameters(config) == trained


def test_a_second_run_on_the_same_checkpoint_is_refused(fake_coco, tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               str(tmp_path / ".r.npz.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        one_line_error(capsys, lambda: train(tmp_path, fake_coco, "--model", "rnn", "--epochs", "1"),
                       "another training run is writing", ".r.npz.lock")
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "r.npz").exists()
    train(tmp_path, fake_coco, "--model", "rnn", "--epochs", "1")  # the lock dies with its holder
    assert (tmp_path / "r.npz").is_file()


def test_a_stale_temporary_file_of_a_killed_run_is_removed(fake_coco, tmp_path, capsys):
    """Removed when the next run on that checkpoint starts, even one that then writes nothing."""
    stale = [tmp_path / ".r.npz.tmp", tmp_path / ".r_best.npz.tmp", tmp_path / ".r_last.npz.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 2_000_000)
    one_line_error(capsys, lambda: train(tmp_path, fake_coco, "--model", "rnn", "--num_samples", "5000"),
                   "--num_samples 5000")
    assert not any(path.exists() for path in stale)


def _copy(fake_coco, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(fake_coco, data)
    return data


def _rewrite_h5(path, name, value):
    with h5py.File(path, "a") as f:
        del f[name]
        f.create_dataset(name, data=value)


def _float_captions(d):
    with h5py.File(d / "coco2014_captions.h5") as f:
        captions = f["train_captions"][()]
    _rewrite_h5(d / "coco2014_captions.h5", "train_captions", captions.astype(np.float32))


def _narrow_val_features(d):
    with h5py.File(d / "val2014_vgg16_fc7_pca.h5") as f:
        features = f["features"][()]
    _rewrite_h5(d / "val2014_vgg16_fc7_pca.h5", "features", features[:, :100])


def _flat_features(d):
    _rewrite_h5(d / "train2014_vgg16_fc7_pca.h5", "features", np.zeros(60, dtype=np.float32))


def _vocab(d, edit):
    vocab = json.loads((d / "coco2014_vocab.json").read_text())
    edit(vocab)
    (d / "coco2014_vocab.json").write_text(json.dumps(vocab))


def _no_start(vocab):
    vocab["idx_to_word"][1] = "start"
    vocab["word_to_idx"] = {w: i for i, w in enumerate(vocab["idx_to_word"])}


def _disagree(vocab):
    vocab["word_to_idx"]["w3"], vocab["word_to_idx"]["w4"] = vocab["word_to_idx"]["w4"], vocab["word_to_idx"]["w3"]


def _empty_val(d):
    for name in ("val_captions", "val_image_idxs"):
        with h5py.File(d / "coco2014_captions.h5") as f:
            value = f[name][()][:0]
        _rewrite_h5(d / "coco2014_captions.h5", name, value)


def _non_finite(split, rows, value):
    def edit(d):
        path = d / f"{split}2014_vgg16_fc7_pca.h5"
        with h5py.File(path) as f:
            features = f["features"][()]
        features[rows, 3] = value
        _rewrite_h5(path, "features", features)
    return edit


BAD_DATA = {
    "float captions": (_float_captions, ["train_captions must hold integers", "float32"]),
    "feature widths differ": (_narrow_val_features, ["the train split has 512-d features but the val split 100-d features"]),
    "1-D features": (_flat_features, ["train2014_vgg16_fc7_pca.h5", "2-D float array", "(60,)"]),
    "no <START>": (lambda d: _vocab(d, _no_start), ["no <START> token"]),
    "vocabulary disagrees": (lambda d: _vocab(d, _disagree), ["idx_to_word and word_to_idx disagree", '"w3"']),
    "empty val split": (_empty_val, ["the val split has no captions"]),
    "NaN train rows": (_non_finite("train", [4, 9, 11], np.nan),
                       ["train2014_vgg16_fc7_pca.h5", "3 of 60 feature rows hold NaN or inf", "row 4"]),
    "inf val row": (_non_finite("val", [7], np.inf), ["val2014_vgg16_fc7_pca.h5", "1 of 20 feature rows"]),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_is_found_at_load_time(fake_coco, tmp_path, case):
    edit, fragments = BAD_DATA[case]
    data = _copy(fake_coco, tmp_path)
    edit(data)
    with pytest.raises(UserError) as e:
        load_coco_data(data)
    for fragment in fragments:
        assert fragment in str(e.value), str(e.value)


def test_bad_data_through_the_script_writes_nothing(fake_coco, tmp_path, capsys):
    data = _copy(fake_coco, tmp_path)
    _non_finite("val", [2], np.inf)(data)
    one_line_error(capsys, lambda: train(tmp_path, data, "--model", "rnn"), "1 of 20 feature rows hold NaN or inf")
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def _rnn_file(tmp_path):
    model = CaptioningRNN({"<NULL>": 0, "<START>": 1, "<END>": 2, "a": 3}, input_dim=4, wordvec_dim=3, hidden_dim=5,
                          seed=0)
    path = tmp_path / "m.npz"
    save_checkpoint(model, path)
    return model, path


def _transformer_file(tmp_path):
    torch.manual_seed(0)
    model = CaptioningTransformer({"<NULL>": 0, "<START>": 1, "<END>": 2, "a": 3}, input_dim=4, wordvec_dim=8,
                                  num_heads=2, num_layers=1, dim_feedforward=8, max_length=10)
    path = tmp_path / "m.pt"
    save_checkpoint(model, path)
    return model, path


def test_checkpoints_with_non_finite_weights_are_refused(tmp_path):
    model, path = _rnn_file(tmp_path)
    model.params["W_vocab"][1, 2] = np.nan
    save_checkpoint(model, path)
    with pytest.raises(UserError, match=r"non-finite weights \(NaN or inf in W_vocab\)"):
        load_checkpoint(path)
    model, path = _transformer_file(tmp_path)
    with torch.no_grad():
        model.output.bias[0] = float("inf")
    save_checkpoint(model, path)
    with pytest.raises(UserError, match=r"non-finite weights \(NaN or inf in output.bias\)"):
        load_checkpoint(path)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, bool, np.complex64])
def test_parameters_that_are_not_floats_are_refused_naming_the_array(tmp_path, dtype):
    """Break caught: an integer, boolean or complex weight cast silently (or with numpy's
    ComplexWarning) into a model that then captions garbage."""
    model, path = _rnn_file(tmp_path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["Wx"] = arrays["Wx"].astype(dtype)
    np.savez(path, **arrays)
    with pytest.raises(UserError, match=f"parameter Wx has dtype {np.dtype(dtype)}, not a floating-point type"):
        load_checkpoint(path)
    original = {k: v for k, v in arrays.items() if k != "config"}  # the original repository's eight arrays
    original["Wh"] = original["Wh"].astype(np.float32)
    np.savez(path, **original)
    with pytest.raises(UserError, match=f"parameter Wx has dtype {np.dtype(dtype)}, not a floating-point type"):
        load_checkpoint(path, vocabulary=model.idx_to_word)
    model, path = _transformer_file(tmp_path)
    blob = torch.load(path, weights_only=True)
    blob.pop("sha256")
    blob["state_dict"]["embedding.weight"] = torch.as_tensor(np.zeros((4, 8), dtype=dtype))
    torch.save(blob, path)
    with pytest.raises(UserError, match="parameter embedding.weight has dtype torch.*, not a floating-point type"):
        load_checkpoint(path)


@pytest.mark.parametrize("key, value", [("max_length", -5), ("wordvec_dim", 0), ("num_layers", 2.5),
                                        ("dropout", 1.5)])
def test_a_config_with_impossible_sizes_is_refused_as_the_files(tmp_path, key, value):
    """Break caught: a crafted max_length of -5 reported as a problem with the user's --max_length."""
    _, path = _transformer_file(tmp_path)
    blob = torch.load(path, weights_only=True)
    blob.pop("sha256")
    blob["config"][key] = value
    torch.save(blob, path)
    with pytest.raises(UserError, match=f"m.pt is not a readable checkpoint .*config's {key} is {value}"):
        load_checkpoint(path)


def test_a_truncated_checkpoint_is_called_truncated(tmp_path):
    for _, path in (_rnn_file(tmp_path), _transformer_file(tmp_path)):
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
        with pytest.raises(UserError, match="is truncated or corrupt"):
            load_checkpoint(path)


def test_a_bit_flip_in_a_torch_checkpoint_is_found(tmp_path):
    model, path = _transformer_file(tmp_path)
    load_checkpoint(path)  # intact: loads
    raw = bytearray(path.read_bytes())
    weight = model.transformer.layers[0].linear1.weight.detach().numpy().tobytes()
    at = raw.find(weight[:32])
    assert at > 0
    raw[at + 5] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="corrupt .*checksum does not match"):
        load_checkpoint(path)


def test_a_checkpoint_with_pickled_objects_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"config": argparse.Namespace(model="transformer"), "state_dict": {}}, path)
    with pytest.raises(UserError) as e:
        load_checkpoint(path)
    assert "holds pickled Python objects" in str(e.value) and "\n" not in str(e.value)
    assert "weights_only=False" not in str(e.value)
    one_line_error(capsys, lambda: inference.main(["--model", "transformer", "--checkpoint", str(path)]),
                   "pickled Python objects", "not loaded")


def test_a_directory_is_named_as_one(tmp_path, capsys):
    one_line_error(capsys, lambda: inference.main(["--model", "lstm", "--checkpoint", str(tmp_path)]),
                   "is a directory")
    _, path = _rnn_file(tmp_path)
    one_line_error(capsys, lambda: inference.main(["--model", "rnn", "--checkpoint", str(path),
                                                   "--image", str(tmp_path)]), "is a directory")


@pytest.fixture
def full_disk(tmp_path):
    """A 512 KiB tmpfs with good files in it and no space left; skipped where tmpfs cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder):
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 1024)
        except OSError:
            pass


def test_a_full_disk_keeps_every_previous_file(full_disk, tmp_path):
    rnn, _ = _rnn_file(tmp_path)
    transformer, _ = _transformer_file(tmp_path)
    good = {}
    for name, write in [("r.npz", lambda p: save_checkpoint(rnn, p)), ("t.pt", lambda p: save_checkpoint(transformer, p)),
                        ("h.json", lambda p: atomic_write_text(p, "{}")),
                        ("rnn_loss.png", lambda p: run_module.save_loss_plot(
                            {"loss": [3, 2, 1], "train_loss": [2], "val_loss": [2]}, "t", p))]:
        write(full_disk / name)
        good[name] = ((full_disk / name).read_bytes(), write)
    _fill(full_disk)
    for name, (before, write) in good.items():
        with pytest.raises(UserError, match=f"cannot write {full_disk / name}: No space left on device"):
            write(full_disk / name)
        assert (full_disk / name).read_bytes() == before, name
    with pytest.raises(UserError, match="cannot write .*new_loss.png: No space left on device"):
        run_module.save_loss_plot({"loss": [3, 2, 1], "train_loss": [2], "val_loss": [2]}, "t", full_disk / "new_loss.png")
    assert not (full_disk / "new_loss.png").exists()
    assert sorted(p.name for p in full_disk.iterdir()) == sorted([*good, "filler"])  # no partial or temporary file


@pytest.mark.slow
def test_a_failing_write_during_training_is_one_line_and_keeps_the_good_files(fake_coco, tmp_path):
    """Writes fail past a file-size limit (EFBIG), wherever tmpfs cannot be mounted too."""
    args = [sys.executable, str(ROOT / "training.py"), "--model", "lstm", "--data_dir", str(fake_coco), *TINY,
            "--epochs", "1", "--checkpoint", "r.npz"]
    first = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in tmp_path.glob("r*.npz")}
    limit = (tmp_path / "r_last.npz").stat().st_size // 2

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run([*args, "--lr", "1e-3", "--epochs", "2", "--checkpoint", "r.npz"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, preexec_fn=small_files)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    line, = result.stderr.strip().splitlines()
    assert "cannot write r_last.npz: File too large" in line
    # the earlier run's files, moved aside before the new run's first write (test_a_new_run_moves_...)
    (kept,) = (tmp_path / "previous_runs").iterdir()
    assert {p.name: p.read_bytes() for p in kept.glob("r*.npz")} == before
    load_checkpoint(tmp_path / "r_best.npz")  # the new run's best epoch was small enough to be written whole
    assert not (tmp_path / "r_last.npz").exists()  # its own _last could not be written: none, not a part
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_removes_its_temporary_file_on_any_failure(tmp_path):
    from core.util.fileio import atomic_write

    target = tmp_path / "x.bin"
    target.write_bytes(b"good")

    def half_then_fail(f):
        f.write(b"partial")
        raise OSError(5, "Input/output error")

    with pytest.raises(UserError, match="cannot write .*x.bin: Input/output error"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"good" and os.listdir(tmp_path) == ["x.bin"]


def test_only_running_out_of_memory_becomes_a_one_line_error(monkeypatch):
    """Breaks caught: the handler naming torch.OutOfMemoryError, which older torch versions that
    requirements.txt allows lack (every other RuntimeError then became an AttributeError); an
    unrelated RuntimeError reported as out of memory."""
    monkeypatch.delattr(torch, "OutOfMemoryError", raising=False)  # as in torch < 2.5
    with pytest.raises(RuntimeError, match="^an unrelated failure$"), out_of_memory_errors():
        raise RuntimeError("an unrelated failure")
    with pytest.raises(UserError, match=r"^out of memory \(CUDA out of memory. Tried to allocate 2.00 GiB\)"), \
            out_of_memory_errors():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
    with pytest.raises(UserError, match=r"^out of memory \(.*DefaultCPUAllocator: can't allocate"), \
            out_of_memory_errors():
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:114] DefaultCPUAllocator: can't allocate memory")
    with pytest.raises(UserError, match="use a smaller model"), out_of_memory_errors():
        raise MemoryError("Unable to allocate 3.00 GiB for an array")


def test_resuming_on_another_number_of_processes_keeps_the_captions_per_step_or_says_what_to_pass():
    """Breaks caught: the per-process batch kept (the step changes silently), --batch_size refused
    although it keeps the step, a step that the processes cannot share silently rounded."""
    from core.training.config import resumed_batch_size

    assert resumed_batch_size(25, 2, 1) == (50, "resuming a run of 2 process(es) x batch 25 on 1 process(es): "
                                                "batch 50 per process, the same 50 captions per step")
    assert resumed_batch_size(50, 1, 2, given=25) == (25, "resuming a run of 1 process(es) x batch 50 on 2 "
                                                          "process(es): batch 25 per process, the same 50 captions "
                                                          "per step")
    assert resumed_batch_size(40, 2, 2) == (40, None)
    with pytest.raises(UserError, match="50 captions per step .* which 3 processes cannot share evenly: resume it "
                                        "on 1 or 2 or 5 or 10 or 25 or 50 processes"):
        resumed_batch_size(25, 2, 3)
    with pytest.raises(UserError, match="--batch_size 30 contradicts the run's 50 captions per step .* its batch "
                                        "is 50"):
        resumed_batch_size(25, 2, 1, given=30)


def test_output_locations_are_checked_before_the_data_is_loaded(fake_coco, tmp_path, capsys, monkeypatch):
    """Breaks caught: --checkpoint naming a directory trained a whole epoch and wrote stray files
    before failing; an --out_dir that cannot be written failed only at the loss plot, after the run."""
    monkeypatch.setattr(run_module, "load_coco_data", lambda *a, **k: pytest.fail("the data was loaded"))
    (tmp_path / "good").mkdir()
    one_line_error(capsys, lambda: training.main(["--model", "rnn", "--data_dir", str(fake_coco), "--checkpoint",
                                                  str(tmp_path / "good"), "--out_dir", str(tmp_path)]),
                   "--checkpoint", "good is a directory")
    assert [p.name for p in tmp_path.iterdir()] == ["good"] and not list((tmp_path / "good").iterdir())
    (tmp_path / "plain").write_text("")
    one_line_error(capsys, lambda: training.main(["--model", "rnn", "--data_dir", str(fake_coco), "--checkpoint",
                                                  str(tmp_path / "r.npz"), "--out_dir", str(tmp_path / "plain")]),
                   "--out_dir", "plain is a file, not a folder")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere: a read-only folder cannot be made here
        locked = Path("/proc/self/out")  # /proc refuses new files even to root
    one_line_error(capsys, lambda: training.main(["--model", "rnn", "--data_dir", str(fake_coco), "--checkpoint",
                                                  str(tmp_path / "r.npz"), "--out_dir", str(locked / "sub")]),
                   "--out_dir", "cannot be written")


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("script, patched, argv, kept", [
    ("training", "core.training.run:load_coco_data", ["--model", "rnn", "--checkpoint", "{tmp}/r.npz", "--out_dir", "{tmp}"],
     "checkpoints of finished epochs) are kept"),
    ("inference", "core.model.checkpoint:load_checkpoint", ["--model", "rnn", "--eval", "--out_dir", "{tmp}"], "files written before"),
    ("features_extraction", "core.data.builder:build_dataset", ["--train_annotations", "a", "--train_images", "b", "--val_annotations",
                                              "c", "--val_images", "d", "--out_dir", "{tmp}/ds"], "ds is as it was"),
])
def test_ctrl_c_outside_the_training_loop_is_one_line_and_exit_130(script, patched, argv, kept, fake_coco, tmp_path,
                                                                   capsys, monkeypatch):
    """Break caught: Ctrl-C while loading data, extracting features or scoring was a traceback."""
    import importlib

    module = importlib.import_module(script)
    owner, _, patched = patched.rpartition(":")  # a function of the script, or "module:function"
    monkeypatch.setattr(importlib.import_module(owner) if owner else module, patched, _interrupt)
    argv = [a.format(tmp=tmp_path) for a in argv]
    if script != "features_extraction":
        argv += ["--data_dir", str(fake_coco)]
    line = one_line_error(capsys, lambda: module.main(argv), f"{script}.py: stopped at once", kept, code=130)
    assert "Traceback" not in line


def _craft(path, change_config=None, change_arrays=None, change_flags=None):
    """Rewrite a resumable .npz with its training state (in the config JSON), arrays or saved flags changed."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    config = json.loads(str(arrays.pop("config")))
    if change_config:
        change_config(config["training_state"])
    if change_flags:
        change_flags(config["extra"]["args"])
    if change_arrays:
        change_arrays(arrays)
    np.savez(path, config=np.array(json.dumps(config)), **arrays)


@pytest.mark.parametrize("what, craft, message", [
    ("moments of the wrong shape", dict(change_arrays=lambda a: a.update({"state.optimizer.Wx.m": np.zeros((2, 2))})),
     "optimizer state Wx.m of shape (2, 2) does not fit"),
    ("NaN moments", dict(change_arrays=lambda a: a["state.optimizer.Wh.v"].fill(np.nan)),
     "optimizer state Wh.v"),
    ("an iteration past the epoch", dict(change_config=lambda s: s["loop"].update(iteration=1_000_000)),
     "loop iteration 1000000 is outside"),
    ("a negative epoch", dict(change_config=lambda s: s["loop"].update(epoch=-3)), "loop epoch -3 is outside"),
    ("another generator's state", dict(change_config=lambda s: s["loop"].update(
        rng={"bit_generator": "MT19937", "state": {"key": [0], "pos": 0}})), "not a PCG64 state"),
    ("no history", dict(change_config=lambda s: s["loop"].pop("history")), "loop state lacks history"),
    ("a short history", dict(change_config=lambda s: s["loop"]["history"].update(val_loss=[])),
     "history does not hold 1 epochs"),
    ("no epoch", dict(change_config=lambda s: s["loop"].pop("epoch")), "loop state lacks epoch"),
    ("no loop", dict(change_config=lambda s: s.pop("loop")), "no loop or optimizer state"),
    ("a negative process count", dict(change_config=lambda s: s["loop"].update(world_size=-2)),
     "loop world_size -2 is outside"),
    ("no processes", dict(change_config=lambda s: s["loop"].update(world_size=0)), "loop world_size 0 is outside"),
    ("integer moments", dict(change_arrays=lambda a: a.update({"state.optimizer.Wx.m": a["state.optimizer.Wx.m"]
                                                              .astype(np.int64)})), "optimizer state Wx.m"),
    ("a batch of 0", dict(change_flags=lambda f: f.update(batch_size=0)), "--batch_size must be positive, got 0"),
    ("an unknown model", dict(change_flags=lambda f: f.update(model="cnn")), "its model 'cnn' is not one of"),
    ("a negative val_samples", dict(change_flags=lambda f: f.update(val_samples=-5)),
     "--val_samples must be positive, got -5"),
])
def test_a_damaged_resumable_state_is_refused_in_one_line(what, craft, message, fake_coco, tmp_path, capsys):
    """Breaks caught: a *_last file trusted beyond its weights (a broadcast traceback, a diverged run
    blamed on --lr, a run resumed at an impossible position, RNG and history tracebacks, KeyError
    'epoch' from a state read before it was checked, `batch -100 per process` from world_size -2,
    a ZeroDivisionError from world_size 0, saved flags no run could have)."""
    train(tmp_path, fake_coco, "--model", "rnn", "--epochs", 1)
    last = tmp_path / "r_last.npz"
    _craft(last, **craft)
    capsys.readouterr()
    one_line_error(capsys, lambda: training.main(["--resume", str(last), "--epochs", "2"]),
                   "r_last.npz holds a damaged training state", message, "not resumed")


def test_a_damaged_torch_resumable_state_is_refused_in_one_line(fake_coco, tmp_path, capsys):
    train(tmp_path, fake_coco, "--model", "transformer", "--epochs", 1, "--checkpoint", tmp_path / "t.pt")
    last = tmp_path / "t_last.pt"
    blob = torch.load(last, weights_only=True)
    blob.pop("sha256")
    moments = next(iter(blob["training_state"]["optimizer"]["adam"]["state"].values()))
    moments["exp_avg"] = torch.full_like(moments["exp_avg"], float("nan"))
    torch.save(blob, last)
    capsys.readouterr()
    one_line_error(capsys, lambda: training.main(["--resume", str(last), "--epochs", "2"]),
                   "t_last.pt holds a damaged training state", "Adam exp_avg", "not finite")


def test_resuming_on_another_dataset_names_the_one_it_was_trained_on(fake_coco, tmp_path, capsys):
    """Break caught: a run of --num_samples 250 resumed with a smaller --data_dir reported
    "--num_samples 250 is out of range", a flag the user never gave."""
    from core.datasets.make_fake_coco import write_fake_coco

    train(tmp_path, fake_coco, "--model", "rnn", "--epochs", 1, "--num_samples", 250, "--recipe", "default")
    other = write_fake_coco(tmp_path / "other", train_images=20, val_images=5, seed=3)  # 100 captions
    capsys.readouterr()
    one_line_error(capsys, lambda: training.main(["--resume", str(tmp_path / "r_last.npz"), "--epochs", "2",
                                                  "--data_dir", str(other)]),
                   "r_last.npz was trained on another dataset", f"({Path(fake_coco).resolve()})",
                   f"pass --data_dir {Path(fake_coco).resolve()}")


def test_a_copied_run_folder_resumes_into_its_own_folder(fake_coco, tmp_path, capsys):
    """Break caught: a copy of a run folder resumed from the copy rewrote the original folder's loss
    plot and history (its absolute --out_dir was kept)."""
    run_dir = tmp_path / "run"
    train(run_dir, fake_coco, "--model", "rnn", "--epochs", 1)  # out_dir run/out, absolute
    shutil.copytree(run_dir, tmp_path / "copy")
    before = (run_dir / "out" / "r_history.json").read_bytes()
    capsys.readouterr()
    training.main(["--resume", str(tmp_path / "copy" / "r_last.npz"), "--epochs", "2"])
    out = capsys.readouterr().out
    assert f"writing {tmp_path / 'copy' / 'r.npz'} and the plots and history in {tmp_path / 'copy' / 'out'}" in out
    assert (run_dir / "out" / "r_history.json").read_bytes() == before
    assert len(json.loads((tmp_path / "copy" / "out" / "r_history.json").read_text())["val_loss"]) == 2


def test_inference_finds_the_data_folder_the_checkpoint_was_trained_on(fake_coco, tmp_path, capsys, monkeypatch):
    """Breaks caught: inference.py falling back to the sample dataset for a checkpoint that records
    its data folder; a dataset mismatch that does not name the folder to pass."""
    train(tmp_path, fake_coco, "--model", "rnn", "--epochs", 1)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    inference.main(["--model", "rnn", "--checkpoint", str(tmp_path / "r.npz"), "--split", "val", "--num_images", "1",
                    "--out_dir", str(tmp_path)])
    assert f"data: {Path(fake_coco).resolve()}, the folder {tmp_path / 'r.npz'} was trained on" in \
        capsys.readouterr().out
    from core.data.coco_utils import SAMPLE_DIR

    one_line_error(capsys, lambda: inference.main(["--model", "rnn", "--checkpoint", str(tmp_path / "r.npz"),
                                                   "--data_dir", str(SAMPLE_DIR), "--split", "val"]),
                   "different vocabulary")


def test_data_smaller_than_a_batch_is_said_and_takes_the_small_data_recipe(tmp_path, capsys, monkeypatch):
    """Breaks caught: 32 captions trained 10 single-step epochs under the regular defaults without a
    word (the small-data recipe was chosen only by --num_samples); the recipe applied after the model
    was built (its dropout then stayed 0.1)."""
    from core.datasets.make_fake_coco import write_fake_coco

    small = write_fake_coco(tmp_path / "small", train_images=8, val_images=4, captions_per_image=4, seed=2)
    built_with = []

    def starting_model(args, *rest):
        built_with.append((args.dropout, args.epochs, args.batch_size))
        raise KeyboardInterrupt  # enough: stop before training

    monkeypatch.setattr(run_module, "starting_model", starting_model)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        training.main(["--model", "transformer", "--data_dir", str(small), "--checkpoint", str(tmp_path / "t.pt"),
                       "--out_dir", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    assert ("recipe small-data (the data has 32 training captions <= 1000; --recipe default turns it off): epochs "
            "100, batch_size 50, lr_decay 1, val_samples 100, dropout 0") in out
    assert "note: the 32 training captions are fewer than one batch of 50: each epoch is a single step" in out
    assert built_with == [(0.0, 100, 50)]
    with pytest.raises(SystemExit):
        training.main(["--model", "rnn", "--data_dir", str(small), "--recipe", "default", "--checkpoint",
                       str(tmp_path / "r.npz"), "--out_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "recipe small-data" not in out and "fewer than one batch of 100" in out
    assert built_with[-1] == (0.1, 10, 100)


def test_two_runs_and_two_evaluations_in_one_out_dir_keep_their_own_files(fake_coco, tmp_path, capsys):
    """Break caught: outputs named by model type alone, so a second run (or a beam evaluation) in the
    same --out_dir overwrote the first one's plot, history and scores."""
    out = tmp_path / "out"
    for name in ("first", "second"):
        training.main(["--data_dir", str(fake_coco), *TINY, "--model", "rnn", "--epochs", "1", "--checkpoint",
                       str(tmp_path / f"{name}.npz"), "--out_dir", str(out)])
    for beam in ("1", "2"):
        inference.main(["--model", "rnn", "--checkpoint", str(tmp_path / "first.npz"), "--data_dir", str(fake_coco),
                        "--eval", "--beam_size", beam, "--out_dir", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [
        "first_history.json", "first_loss.png", "first_val_beam2_eval.html", "first_val_beam2_eval.json",
        "first_val_beam2_eval_files", "first_val_beam2_results.json", "first_val_greedy_eval.html",
        "first_val_greedy_eval.json", "first_val_greedy_eval_files", "first_val_greedy_results.json",
        "second_history.json", "second_loss.png"]
    said = capsys.readouterr().out
    assert f"saved plot {out / 'first_loss.png'} and history {out / 'first_history.json'}" in said
    assert f"saved scores and captions {out / 'first_val_beam2_eval.json'}" in said


def test_a_run_on_little_data_names_one_recipe(fake_coco):
    """Break caught: a run on at most 1000 captions printed "recipe default" and then, after loading
    the data, "recipe small-data (...)": the recipe is now settled once, before anything runs."""
    from core.training.config import settle

    settled = settle(["--model", "rnn", "--data_dir", str(fake_coco)])
    recipes = [line for line in settled.lines if line.startswith("recipe")]
    assert recipes == ["recipe small-data (the data has 300 training captions <= 1000; --recipe default turns it "
                       "off): epochs 100, batch_size 50, lr_decay 1, val_samples 100, dropout 0"]
    assert (settled.config.recipe, settled.config.epochs, settled.config.batch_size) == ("small-data", 100, 50)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settled.config.epochs = 3  # nothing changes the settled configuration


def test_a_run_stopped_after_its_last_step_resumes_into_writing_its_final_files(fake_coco, tmp_path,
                                                                                capsys):
    """Break caught: a Ctrl-C just after the last epoch (the final checkpoint, plot and history not
    yet written) left a run whose printed resume command was refused as "already trained"."""
    train(tmp_path, fake_coco, "--model", "rnn", "--epochs", 1)
    history = (tmp_path / "out" / "r_history.json").read_text()
    final = (tmp_path / "r.npz").read_bytes()
    for written in (tmp_path / "r.npz", tmp_path / "out" / "r_history.json", tmp_path / "out" / "r_loss.png"):
        written.unlink()  # as if the stop came before they were written
    capsys.readouterr()
    assert training.main(["--resume", str(tmp_path / "r_last.npz")]) == 0
    out = capsys.readouterr().out
    assert "writing its final files" in out
    assert (tmp_path / "out" / "r_loss.png").is_file()
    assert _history(tmp_path / "out" / "r_history.json") == _history_text(history)
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "r.npz")[0].params["Wx"],
                                  load_checkpoint_bytes(final, tmp_path)["Wx"])
    one_line_error(capsys, lambda: training.main(["--resume", str(tmp_path / "r_last.npz")]),
                   "has already trained 1 of its 1 epochs")


def _history_text(text):
    history = json.loads(text)
    return {k: v for k, v in history.items() if k not in ("train_seconds", "seconds", "checkpoint_path")}


def load_checkpoint_bytes(data, tmp_path):
    (tmp_path / "before.npz").write_bytes(data)
    return load_checkpoint(tmp_path / "before.npz")[0].params


@pytest.fixture
def other_regions(fake_coco, tmp_path):
    """The same dataset with its regions rebuilt at another grid size (9 regions instead of 4): the
    dataset id, which the fc7 PCA features fix, is the same."""
    import h5py

    copy = tmp_path / "nine"
    shutil.copytree(fake_coco, copy)
    for split in ("train", "val"):
        path = copy / f"{split}2014_vgg16_grid_pca.h5"
        with h5py.File(path, "r") as f:
            n = f["features"].shape[0]
        with h5py.File(path, "w") as f:
            f.create_dataset("features", data=np.zeros((n, 9, 8), np.float16))
    return copy


def test_a_checkpoint_of_other_regions_is_one_line_at_every_entry_point(fake_coco, other_regions,
                                                                        tmp_path, capsys):
    """Break caught: `ValueError: region features of shape (196, 8) per image do not fit this model's
    (49, 8)` from captions, --eval, --resume and --scst --init_from."""
    train(tmp_path, fake_coco, "--model", "attention_lstm", "--epochs", 1, "--checkpoint", tmp_path / "a.npz")
    checkpoint = str(tmp_path / "a.npz")
    message = "reads 4 regions per image"
    for argv in (["--split", "val"], ["--eval"]):
        one_line_error(capsys, lambda: inference.main(["--model", "attention_lstm", "--checkpoint", checkpoint,
                                                       "--data_dir", str(other_regions), "--out_dir",
                                                       str(tmp_path), *argv]),
                       message, f"{other_regions} has 9")
    one_line_error(capsys, lambda: training.main(["--resume", str(tmp_path / "a_last.npz"), "--epochs", "2",
                                                  "--data_dir", str(other_regions)]), message)
    one_line_error(capsys, lambda: training.main(["--model", "attention_lstm", "--scst", "--init_from", checkpoint,
                                                  "--data_dir", str(other_regions), "--checkpoint",
                                                  str(tmp_path / "s.npz")]), message)


@pytest.mark.parametrize("what, change, message", [
    ("NaN components", lambda t, i: t["components"].fill(np.nan), "components holds values that are not finite"),
    ("a mean of the wrong length", lambda t, i: t.update(mean=np.zeros(7, np.float32)), "mean has shape (7,)"),
    ("a grid size of 5", lambda t, i: i.update(grid_size=5), "grid_size 5 is not one of (7, 14)"),
    ("an info that is a list", lambda t, i: i.clear() or None, "its info is a list"),
])
def test_a_damaged_grid_transform_is_refused_naming_the_file_and_the_array(what, change, message, tmp_path):
    """Breaks caught: a grid transform with NaN components captioned anyway; a mean of the wrong
    length was a broadcast ValueError, a grid size of 5 went on, an info list an AttributeError."""
    from core.data.features import GRID_TRANSFORM_FILE, load_transform, save_transform
    from core.util.errors import UserError

    transform = {"mean": np.zeros(512, np.float32), "components": np.ones((8, 512), np.float32),
                 "bias": np.zeros(8, np.float32)}
    info = {"vgg16": {"weights": "random", "seed": 0}, "grid_size": 7}
    path = tmp_path / GRID_TRANSFORM_FILE
    save_transform(path, transform, info)
    load_transform(path)  # intact: read
    change(transform, info)
    save_transform(path, transform, [info] if what == "an info that is a list" else info)
    with pytest.raises(UserError, match="damaged") as e:
        load_transform(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_every_output_location_is_checked_before_the_work(fake_coco, tmp_path, capsys, monkeypatch):
    """Breaks caught: features_extraction.py ran VGG16 over every image before finding its --out_dir
    a file (hours at COCO size), and --grid_pca_dim 513 failed only after extraction;
    inference.py --eval captioned and scored a split, then lost the JSON to an --out_dir that is a
    file; --tensorboard at a file was a FileExistsError traceback after the data loaded."""
    import core.data.builder
    import core.data.coco_utils
    import core.evaluation.captions
    import features_extraction

    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    monkeypatch.setattr(core.data.builder, "build_dataset", lambda *a, **k: pytest.fail("extracted"))
    flags = ["--train_annotations", "a", "--train_images", "b", "--val_annotations", "c", "--val_images", "d"]
    one_line_error(capsys, lambda: features_extraction.main([*flags, "--out_dir", str(blocker)]),
                   f"--out_dir {blocker} is a file, not a folder")
    one_line_error(capsys, lambda: features_extraction.parse_args([*flags, "--out_dir", "o", "--grid",
                                                                   "--grid_pca_dim", "513"]),
                   "--grid_pca_dim at most 512")
    train(tmp_path, fake_coco, "--model", "rnn", "--epochs", 1)
    monkeypatch.setattr(core.evaluation.captions, "caption_split", lambda *a, **k: pytest.fail("captioned"))
    one_line_error(capsys, lambda: inference.main(["--model", "rnn", "--checkpoint", str(tmp_path / "r.npz"),
                                                   "--eval", "--out_dir", str(blocker)]),
                   f"--out_dir {blocker} is a file, not a folder")
    monkeypatch.setattr(run_module, "load_coco_data", lambda *a, **k: pytest.fail("the data was loaded"))
    one_line_error(capsys, lambda: training.main(["--model", "rnn", "--data_dir", str(fake_coco), "--checkpoint",
                                                  str(tmp_path / "t.npz"), "--tensorboard", str(blocker)]),
                   f"--tensorboard {blocker} is a file, not a folder")


def _grid_rows(split, rows):
    def edit(d):
        path = d / f"{split}2014_vgg16_grid_pca.h5"
        with h5py.File(path) as f:
            features = f["features"][()]
        _rewrite_h5(path, "features", np.resize(features, (rows,) + features.shape[1:]))
    return edit


def _grid_group(d):
    path = d / "train2014_vgg16_grid_pca.h5"
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_group("features")


def _grid_huge_header(d):
    path = d / "train2014_vgg16_grid_pca.h5"
    path.unlink()
    with h5py.File(path, "w") as f:  # 16 TiB declared, a few bytes written
        f.create_dataset("features", shape=(2 ** 38, 4, 8), dtype="f2", chunks=(1, 4, 8))


BAD_GRIDS = {
    "more region rows than images": (_grid_rows("train", 61), [
        "train2014_vgg16_grid_pca.h5 has 61 rows but train2014_urls.txt lists 60 images", "different builds"]),
    "fewer region rows than images": (_grid_rows("val", 10), [
        "val image indices of coco2014_captions.h5 go past the 10 rows of val2014_vgg16_grid_pca.h5"]),
    "a group, not an array": (_grid_group, ["train2014_vgg16_grid_pca.h5: features is an HDF5 group"]),
    # read per minibatch (more than a quarter of the memory), never whole: its rows do not match its images
    "a crafted 16 TiB header": (_grid_huge_header, ["train2014_vgg16_grid_pca.h5 has 274877906944 rows but "
                                                    "train2014_urls.txt lists 60 images"]),
}


@pytest.mark.parametrize("case", BAD_GRIDS)
def test_bad_region_files_are_named_at_load_time(fake_coco, tmp_path, case):
    """Breaks caught: a grid file with more rows than fc7 blamed train2014_urls.txt, one with fewer
    named no file, a crafted 11 TiB header was reported as a model too large for memory, and a
    `features` group was a TypeError."""
    edit, fragments = BAD_GRIDS[case]
    data = _copy(fake_coco, tmp_path)
    edit(data)
    with pytest.raises(UserError) as e:
        load_coco_data(data, features="grid")
    for fragment in fragments:
        assert fragment in str(e.value), str(e.value)


def test_two_runs_whose_checkpoints_share_a_name_refuse_to_share_outputs(fake_coco, tmp_path, capsys):
    """Break caught: runs/a/lstm_checkpoint.npz and runs/b/lstm_checkpoint.npz trained with one
    --out_dir: the second replaced the first's history and plot (and evaluations) without a word."""
    out = tmp_path / "out"
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
    training.main(["--data_dir", str(fake_coco), *TINY, "--model", "rnn", "--epochs", "1", "--checkpoint",
                   str(tmp_path / "a" / "r.npz"), "--out_dir", str(out)])
    first = (out / "r_history.json").read_bytes()
    capsys.readouterr()
    one_line_error(capsys, lambda: training.main(["--data_dir", str(fake_coco), *TINY, "--model", "rnn", "--epochs",
                                                  "1", "--checkpoint", str(tmp_path / "b" / "r.npz"),
                                                  "--out_dir", str(out)]),
                   f"{out / 'r_history.json'} belongs to the run of {tmp_path / 'a' / 'r.npz'}",
                   "pass another --out_dir")
    assert (out / "r_history.json").read_bytes() == first and not (tmp_path / "b" / "r.npz").exists()
    training.main(["--data_dir", str(fake_coco), *TINY, "--model", "rnn", "--epochs", "1", "--checkpoint",
                   str(tmp_path / "a" / "r.npz"), "--out_dir", str(out)])  # the same run again: its own files
    inference.main(["--model", "rnn", "--checkpoint", str(tmp_path / "a" / "r.npz"), "--eval", "--out_dir", str(out)])
    shutil.copy(tmp_path / "a" / "r.npz", tmp_path / "b" / "r.npz")
    capsys.readouterr()
    one_line_error(capsys, lambda: inference.main(["--model", "rnn", "--checkpoint", str(tmp_path / "b" / "r.npz"),
                                                   "--eval", "--out_dir", str(out)]),
                   "r_val_greedy_eval.json belongs to the run of", "a/r.npz")


def test_two_evaluations_at_once_into_one_file_keep_the_first(fake_coco, tmp_path, capsys, monkeypatch):
    """Breaks caught: two --eval runs at once from same-named checkpoints both exit 0 and one eval
    file survives (ownership was checked at start only, nothing locked): a second evaluation of
    the file is refused while the first holds it, and an evaluation whose file another
    checkpoint's run wrote while it captioned keeps that file."""
    import core.evaluation.captions
    from core.util.fileio import RunLock

    out = tmp_path / "out"
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        train(tmp_path / run, fake_coco, "--model", "rnn", "--epochs", "1")
    a, b = tmp_path / "a" / "r.npz", tmp_path / "b" / "r.npz"
    target = out / "r_val_greedy_eval.json"
    out.mkdir()
    with RunLock(target, who="evaluation"):  # the first evaluation, still running
        one_line_error(capsys, lambda: inference.main(["--model", "rnn", "--checkpoint", str(b), "--eval",
                                                       "--out_dir", str(out)]),
                       "another evaluation is writing", "r_val_greedy_eval.json")
    assert not target.exists()
    caption_split = core.evaluation.captions.caption_split

    def meanwhile(*args, **kwargs):  # the other run finishes first, while this one captions
        monkeypatch.setattr(core.evaluation.captions, "caption_split", caption_split)
        inference.main(["--model", "rnn", "--checkpoint", str(a), "--eval", "--out_dir", str(out)])
        return caption_split(*args, **kwargs)

    monkeypatch.setattr(core.evaluation.captions, "caption_split", meanwhile)
    monkeypatch.setattr(core.evaluation.captions, "RunLock", lambda *a, **k: contextlib.nullcontext())
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        inference.main(["--model", "rnn", "--checkpoint", str(b), "--eval", "--out_dir", str(out)])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert stop.value.code == 2 and "r_val_greedy_eval.json belongs to the run of" in last and "a/r.npz" in last
    assert json.loads(target.read_text())["checkpoint_path"] == str(a.resolve())


def test_a_grid_transform_with_a_pickle_payload_is_refused_unrun(tmp_path):
    """Kept from round two: a crafted grid transform whose array is a pickled object is refused in
    one line, and the payload never runs."""
    from core.data.features import GRID_TRANSFORM_FILE, load_transform
    from core.util.errors import UserError

    ran = tmp_path / "payload_ran"
    payload = np.empty(1, dtype=object)
    payload[0] = Payload(str(ran))
    path = tmp_path / GRID_TRANSFORM_FILE
    np.savez(path, mean=payload, components=np.ones((2, 3), np.float32), bias=np.zeros(2, np.float32),
             info=np.array(json.dumps({"grid_size": 7})))
    with pytest.raises(UserError, match="cannot read the feature transform"):
        load_transform(path)
    assert not ran.exists()


class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_inference_float_flags_must_be_finite(capsys):
    one_line_error(capsys, lambda: inference.parse_args(["--model", "lstm", "--length_penalty", "nan"]),
                   "--length_penalty must be finite, got nan")


def test_a_new_run_moves_a_finished_runs_files_aside(fake_coco, tmp_path, capsys):
    """Break caught: a quick new run (--epochs 1 --max_iters 2) after the main job silently replaced
    its lstm_checkpoint.npz, _best, _last, loss plot and history. The default names and commands
    stay; the earlier run's files move to previous_runs/ before the new run's first write, said in
    one line; a new run that fails before writing (here a flag error found with the data) moves
    nothing."""
    train(tmp_path, fake_coco, "--model", "rnn", "--epochs", "2")
    names = ["r.npz", "r_best.npz", "r_last.npz", "out/r_history.json", "out/r_loss.png"]
    before = {name: (tmp_path / name).read_bytes() for name in names}
    capsys.readouterr()
    one_line_error(capsys, lambda: train(tmp_path, fake_coco, "--model", "rnn", "--num_samples", "100000"),
                   "--num_samples 100000 is out of range")
    assert {name: (tmp_path / name).read_bytes() for name in names} == before
    assert not (tmp_path / "previous_runs").exists()
    train(tmp_path, fake_coco, "--model", "rnn", "--epochs", "1", "--max_iters", "2")
    out = capsys.readouterr().out
    (kept,) = (tmp_path / "previous_runs").iterdir()
    assert f"an earlier run's files of r.npz were moved to {kept}" in out
    assert {name: (kept / name.split("/")[-1]).read_bytes() for name in names} == before
    assert all((tmp_path / name).is_file() for name in names)  # the new run's
    assert load_checkpoint(kept / "r.npz")[1]["extra"]["epoch"] == 2
    assert load_checkpoint(tmp_path / "r.npz")[1]["extra"]["epoch"] == 1


def test_two_builds_into_one_folder_at_once_refuse_the_second(tmp_path, capsys, monkeypatch):
    """Break caught: two features_extraction.py runs into one --out_dir both ran, each replacing the
    other's files at its end."""
    import core.data.builder
    import features_extraction
    from core.util.fileio import RunLock

    monkeypatch.setattr(core.data.builder, "build_dataset", lambda *a, **k: pytest.fail("built"))
    out = tmp_path / "ds"
    out.mkdir()
    flags = ["--train_annotations", "a", "--train_images", "b", "--val_annotations", "c", "--val_images", "d",
             "--out_dir", str(out)]
    with RunLock(out / "coco2014_captions.h5", who="dataset build"):  # the first build, running
        one_line_error(capsys, lambda: features_extraction.main(flags),
                       f"another dataset build is writing {out / 'coco2014_captions.h5'}",
                       "wait for it, or pass another --out_dir")
    monkeypatch.setattr(core.data.builder, "build_dataset", lambda *a, **k: None)
    assert features_extraction.main(flags) == 0 and list(out.iterdir()) == []  # the lock released, removed


def test_a_figure_of_a_same_named_checkpoint_is_kept(fake_coco, tmp_path, capsys):
    """The caption figure records its checkpoint in its PNG text. Break caught: a same-named
    checkpoint of another run replaced the first run's figure (figures recorded no owner)."""
    from PIL import Image

    out = tmp_path / "out"
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        train(tmp_path / run, fake_coco, "--model", "rnn", "--epochs", "1")
    a, b = tmp_path / "a" / "r.npz", tmp_path / "b" / "r.npz"
    flags = ["--model", "rnn", "--split", "val", "--num_images", "1", "--out_dir", str(out)]
    inference.main(["--checkpoint", str(a), *flags])
    figure = out / "r_val_greedy_captions.png"
    first = figure.read_bytes()
    with Image.open(figure) as image:
        assert image.text["checkpoint_path"] == str(a.resolve())
    inference.main(["--checkpoint", str(a), *flags])  # its own run again: replaced
    again = figure.read_bytes()
    capsys.readouterr()
    one_line_error(capsys, lambda: inference.main(["--checkpoint", str(b), *flags]),
                   "r_val_greedy_captions.png belongs to the run of", "a/r.npz")
    assert figure.read_bytes() == again and len(first) > 1000
    page = out / "r_val_greedy_captions.html"  # its results page: the same, even without the figure
    kept = page.read_text()
    figure.unlink()
    one_line_error(capsys, lambda: inference.main(["--checkpoint", str(b), *flags]),
                   "r_val_greedy_captions.html belongs to the run of", "a/r.npz")
    assert page.read_text() == kept and not figure.exists()
    eval_page = out / "r_val_greedy_eval.html"
    eval_page.write_text(kept)  # a page of a's where b's --eval would write its own
    one_line_error(capsys, lambda: inference.main(["--checkpoint", str(b), *flags[:2], "--eval",
                                                   "--out_dir", str(out)]),
                   "r_val_greedy_eval.html belongs to the run of", "a/r.npz")
    assert not (out / "r_val_greedy_eval.json").exists()
