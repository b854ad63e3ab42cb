"""training.py and inference.py end to end, as a user runs them, in a temporary directory."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import inference
from core.evaluation import captions as captioning
import training
from core.model.checkpoint import load_checkpoint
from core.data.coco_utils import decode_captions, load_coco_data
from core.evaluation.metrics import references_by_image
from tests import browser
from tests.helpers import one_line_error

pytestmark = pytest.mark.slow  # subprocesses, torchrun or VGG16 throughout

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--hidden_dim", "32", "--wordvec_dim", "16", "--num_heads", "2", "--dim_feedforward", "24", "--batch_size", "50",
         "--quiet"]


def run(script, *args, cwd):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(fake_coco, tmp_path_factory):
    """Train each model for two epochs; returns the working directory holding checkpoints and outputs."""
    work = tmp_path_factory.mktemp("work")
    for model in ("rnn", "lstm", "gru", "transformer"):
        result = run("training.py", "--model", model, "--data_dir", fake_coco, "--epochs", 2, "--num_samples", 200,
                     *SMALL, "--device", "cpu", cwd=work)
        assert result.returncode == 0, result.stderr
        assert "final train loss" in result.stdout
    return work


@pytest.mark.parametrize("model, checkpoint", [("rnn", "rnn_checkpoint.npz"), ("lstm", "lstm_checkpoint.npz"),
                                               ("gru", "gru_checkpoint.npz"),
                                               ("transformer", "transformer_model.pt")])
def test_train_then_infer(trained, fake_coco, model, checkpoint):
    best = checkpoint.replace(".", "_best.")
    assert (trained / checkpoint).is_file() and (trained / best).is_file()
    assert (trained / "outputs" / f"{Path(checkpoint).stem}_loss.png").stat().st_size > 1000
    history = json.loads((trained / "outputs" / f"{Path(checkpoint).stem}_history.json").read_text())
    assert len(history["train_loss"]) == len(history["val_loss"]) == 2
    assert len(history["loss"]) == 2 * 4  # 200 captions in batches of 50
    if model == "transformer":
        transformer, config = load_checkpoint(trained / checkpoint)
        assert config["dim_feedforward"] == 24 and transformer.transformer.layers[0].linear1.out_features == 24

    result = run("inference.py", "--model", model, "--data_dir", fake_coco, "--num_images", 4, "--device", "cpu",
                 cwd=trained)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("truth:") == 8 and result.stdout.count("predicted:") == 8  # 4 train, 4 val
    figure = trained / "outputs" / f"{Path(checkpoint).stem}_train_val_greedy_captions.png"
    assert figure.stat().st_size > 1000
    assert "could not be fetched" not in result.stdout  # the fixture's URLs are real PNG files
    page = figure.with_suffix(".html").read_text()  # the results page beside it: the same captions
    printed = [line.split("predicted: ", 1)[1] for line in result.stdout.splitlines() if "predicted:" in line]
    shown = re.findall(r'<p class="caption">(.*?)</p>', page)
    assert [re.sub(r"<[^>]+>", "", c) for c in shown] == printed
    assert page.count('<img src="') == 8 and page.count("data-cider=") == 8

    result = run("inference.py", "--model", model, "--checkpoint", best, "--data_dir", fake_coco, "--split", "train",
                 "--num_images", 2, "--device", "cpu", cwd=trained)
    assert result.returncode == 0, result.stderr


def test_inference_survives_images_that_cannot_be_fetched(trained, fake_coco, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(fake_coco, data)
    (data / "val2014_urls.txt").write_text("http://127.0.0.1:9/dead.jpg\n" + "no/such/file.jpg\n" * 19)
    result = run("inference.py", "--model", "lstm", "--checkpoint", trained / "lstm_checkpoint.npz",
                 "--data_dir", data, "--num_images", 3, "--split", "val", "--out_dir", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "3 image(s) could not be fetched" in result.stdout
    assert (tmp_path / "out" / "lstm_checkpoint_val_greedy_captions.png").is_file()


def test_seeded_training_is_reproducible(fake_coco, tmp_path):
    for name in ("a", "b"):
        result = run("training.py", "--model", "rnn", "--data_dir", fake_coco, "--epochs", 1, "--num_samples", 100,
                     *SMALL, "--checkpoint", f"{name}.npz", "--out_dir", name, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert len(a.files) == 9
        for key in a.files:
            if key != "config":  # the config records each run's own --checkpoint
                np.testing.assert_array_equal(a[key], b[key])


def test_user_errors_are_one_line_and_overwrite_nothing(trained, fake_coco, tmp_path, capsys):
    checkpoint = trained / "rnn_checkpoint.npz"
    before = checkpoint.read_bytes()
    common = ["--checkpoint", checkpoint, "--out_dir", tmp_path / "out"]

    def error(*args):
        *flags, fragments = args
        one_line_error(capsys, lambda: training.main([*map(str, flags), *map(str, common)]), *fragments)

    assert_user_error(run("training.py", "--model", "mgu", cwd=tmp_path), "invalid choice", "mgu")  # as a script
    error("--model", "rnn", "--data_dir", tmp_path / "nowhere", ["nowhere", "not found"])
    error("--model", "rnn", "--data_dir", fake_coco, "--num_samples", 5000, ["--num_samples 5000", "300 training captions"])
    broken = tmp_path / "broken"
    shutil.copytree(fake_coco, broken)
    (broken / "coco2014_captions.h5").write_bytes(b"garbage")
    error("--model", "rnn", "--data_dir", broken, ["coco2014_captions.h5"])
    (broken / "coco2014_captions.h5").unlink()
    error("--model", "rnn", "--data_dir", broken, ["missing data file", "coco2014_captions.h5"])
    assert checkpoint.read_bytes() == before
    assert not (tmp_path / "out").exists()


def test_inference_rejects_mismatched_checkpoints(trained, fake_coco, tmp_path, capsys):
    def error(*args, fragments):
        one_line_error(capsys, lambda: inference.main([*map(str, args)]), *fragments)

    error("--model", "rnn", "--checkpoint", trained / "lstm_checkpoint.npz", "--data_dir", fake_coco,
          fragments=['"lstm" model, not "rnn"'])
    error("--model", "rnn", "--checkpoint", trained / "transformer_model.pt", "--data_dir", fake_coco,
          fragments=['"transformer" model, not "rnn"'])
    other_vocab = tmp_path / "other"
    shutil.copytree(fake_coco, other_vocab)
    vocab = json.loads((other_vocab / "coco2014_vocab.json").read_text())
    vocab["idx_to_word"][5], vocab["idx_to_word"][6] = vocab["idx_to_word"][6], vocab["idx_to_word"][5]
    vocab["word_to_idx"] = {w: i for i, w in enumerate(vocab["idx_to_word"])}
    (other_vocab / "coco2014_vocab.json").write_text(json.dumps(vocab))
    error("--model", "rnn", "--checkpoint", trained / "rnn_checkpoint.npz", "--data_dir", other_vocab,
          fragments=["different vocabulary"])
    error("--model", "lstm", "--checkpoint", tmp_path / "none.npz", "--data_dir", fake_coco,
          fragments=["none.npz not found"])
    error("--model", "transformer", "--checkpoint", trained / "transformer_model.pt", "--data_dir", fake_coco,
          "--max_length", 80, "--device", "cpu", fragments=["--max_length 80"])
    (tmp_path / "junk.npz").write_bytes(b"junk")
    error("--model", "lstm", "--checkpoint", tmp_path / "junk.npz", "--data_dir", fake_coco,
          fragments=["junk.npz is truncated or corrupt, or not a checkpoint file"])


def test_cuda_request_without_cuda_is_a_clear_error(fake_coco, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_user_error(run("training.py", "--model", "transformer", "--data_dir", fake_coco, "--device", "cuda",
                          cwd=tmp_path), "no CUDA device")


def test_importing_the_scripts_does_nothing(tmp_path):
    """Breaks caught: work at import time (parsing sys.argv, printing, writing files, choosing the data)."""
    code = "import sys; sys.argv = ['x', '--bad-flag']; import training, inference, features_extraction"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stderr
    assert list(tmp_path.iterdir()) == []


def test_eval_scores_every_image_once_and_writes_json(trained, fake_coco, tmp_path):
    result = run("inference.py", "--model", "lstm", "--checkpoint", trained / "lstm_checkpoint.npz",
                 "--data_dir", fake_coco, "--eval", "--beam_size", 2, "--out_dir", tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "BLEU-4" in result.stdout and "CIDEr" in result.stdout
    assert (f"scored: checkpoint {trained / 'lstm_checkpoint.npz'}, {fake_coco} split val (20 images), beam 2 decoding"
            in result.stdout)
    assert "against the val split's own captions (100 for 20 images, as tokenized and cut to 17 tokens" in result.stdout
    report = json.loads((tmp_path / "lstm_checkpoint_val_beam2_eval.json").read_text())
    assert len(report["predictions"]) == 20 and report["beam_size"] == 2
    assert report["references"].startswith("the val split's own captions (100 for 20 images")
    assert sorted(p["image"] for p in report["predictions"]) == list(range(20))
    assert all(len(p["references"]) == 5 for p in report["predictions"])
    from core.evaluation.metrics import score_captions  # the reported scores are those of the reported captions

    again = score_captions({p["image"]: p["caption"] for p in report["predictions"]},
                           {p["image"]: p["references"] for p in report["predictions"]}, meteor=False)
    assert {k: v for k, v in report["scores"].items() if k != "METEOR"} == {k: v for k, v in again.items()
                                                                              if k != "METEOR"}
    references = references_by_image(*(load_coco_data(fake_coco)[k] for k in ("val_captions", "val_image_idxs",
                                                                               "idx_to_word")))
    assert all(p["references"] == references[p["image"]] for p in report["predictions"])
    page = (tmp_path / "lstm_checkpoint_val_beam2_eval.html").read_text()  # each image's CIDEr-D
    cider = [float(c) for c in re.findall(r'data-cider="([0-9.]+)"', page)]
    assert len(cider) == 20 and np.mean(cider) == pytest.approx(report["scores"]["CIDEr"], abs=1e-5)


def test_eval_every_keeps_the_best_checkpoint_by_cider(fake_coco, tmp_path):
    result = run("training.py", "--model", "rnn", "--data_dir", fake_coco, "--epochs", 2, *SMALL,
                 "--eval_every", 1, "--eval_images", 10, "--checkpoint", "r.npz", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    history = json.loads((tmp_path / "outputs" / "r_history.json").read_text())
    assert history["eval_epoch"] == [1, 2] and len(history["val_cider"]) == 2
    with np.load(tmp_path / "r_best.npz") as f:
        extra = json.loads(str(f["config"]))["extra"]
    assert extra["val_cider"] == max(history["val_cider"])


def test_max_iters_cuts_epochs_short_and_reports_speed(fake_coco, tmp_path):
    result = run("training.py", "--model", "lstm", "--data_dir", fake_coco, "--epochs", 2, *SMALL, "--max_iters", 2,
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "training iterations per second (batch 50 captions)" in result.stdout
    history = json.loads((tmp_path / "outputs" / "lstm_checkpoint_history.json").read_text())
    assert len(history["loss"]) == 4 and len(history["train_seconds"]) == 2


def test_plot_loss_curves_compares_the_trained_models(trained, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plot_loss_curves.py"), "--history_dir",
                             str(trained / "outputs"), "--out", str(tmp_path / "curves.png")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "rnn, lstm, gru, transformer" in result.stdout and (tmp_path / "curves.png").stat().st_size > 1000
    empty = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plot_loss_curves.py"), "--history_dir",
                            str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert empty.returncode == 2 and "run training.py first" in empty.stderr


def test_eval_end_to_end_on_the_bundled_sample_dataset(tmp_path, capsys, monkeypatch):
    """The default data directory (the sample dataset when COCO is absent) through training and --eval
    (in-process: the scripts' wiring as subprocesses is tested above)."""
    from core.data.coco_utils import SAMPLE_DIR

    monkeypatch.chdir(tmp_path)
    training.main(["--model", "rnn", "--data_dir", str(SAMPLE_DIR), "--epochs", "1", "--max_iters", "5",
                   *map(str, SMALL)])
    capsys.readouterr()
    inference.main(["--model", "rnn", "--data_dir", str(SAMPLE_DIR), "--eval"])
    assert f"{SAMPLE_DIR} split test (500 images), greedy decoding" in capsys.readouterr().out  # test by default
    report = json.loads((tmp_path / "outputs" / "rnn_checkpoint_test_greedy_eval.json").read_text())
    assert len(report["predictions"]) == 500 and all(len(p["references"]) == 5 for p in report["predictions"])
    # its results page in a real browser: every image loaded, every caption there, in order
    dom = browser.dom(tmp_path / "outputs" / "rnn_checkpoint_test_greedy_eval.html")
    assert 'data-images="500"' in dom and 'data-loaded="500"' in dom
    shown = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r'<p class="caption">(.*?)</p>', dom)]
    assert shown == [p["caption"] for p in report["predictions"]]
    assert dom.count("equals a reference") == sum(p["caption"] in p["references"] for p in report["predictions"])


def test_gpu_benchmark_script_dry_run_on_cpu(tmp_path):
    """The prepared GPU measurement runs end to end (on the CPU, tiny data) and prints its JSON."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_transformer.py"), "--device", "cpu",
                             "--small", "--max_iters", "1", "--batch_sizes", "20"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(r["batch_size"], r["amp"]) for r in report["runs"]] == [(20, False), (20, True)]
    # the speeds are read from training.py's own summary line: captions/s is that figure times the batch
    assert all(r["captions_per_s"] == round(r["iterations_per_s"] * 20, 1) for r in report["runs"])
    assert report["device"] == "cpu" and report["device_name"] == "cpu"


def test_probe_script_finds_every_object_attribute_in_the_sample_box_features():
    """The sample dataset is designed so that its object regions keep every attribute of the object
    (the fc7 and grid features do not keep shapes of objects placed anywhere: that is the point)."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "probe_sample_features.py"), "--features",
                             "boxes"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["test_boxes"] == 826 and report["train_boxes"] == 3274  # every object of the scenes
    assert min(report[k] for k in ("color", "shape", "size")) > 0.98


def test_shown_truth_is_the_reference_the_prediction_equals(fake_coco, monkeypatch):
    data = load_coco_data(fake_coco)
    image_idxs, captions, features = data["val_image_idxs"], data["val_captions"], data["val_features"]
    chosen = []

    def second_reference_but_empty_last(model, feats, args):  # word indices after <START>
        chosen.extend(int(np.flatnonzero((features == f).all(axis=1))[0]) for f in feats)
        out = np.stack([captions[np.flatnonzero(image_idxs == i)[1], 1:] for i in chosen])
        out[-1] = data["word_to_idx"]["<NULL>"]
        out[-1, 0] = data["word_to_idx"]["<END>"]
        return out, None  # no attention maps

    monkeypatch.setattr(captioning, "load_checked_data", lambda settings, config: data)
    monkeypatch.setattr(captioning, "sample", second_reference_but_empty_last)
    args = inference.parse_args(["--model", "lstm", "--data_dir", str(fake_coco), "--num_images", "3", "--split", "val"])
    settings = captioning.Settings(**{**vars(args), "checkpoint": "lstm_checkpoint.npz", "device": "cpu",
                                      "feature_device": "cpu", "image_labels": {}})
    panels, _, note = captioning.caption_dataset_images(settings, None, {})
    assert note is None  # the sample-dataset note is for --image only
    truth, predicted = [p["truth"] for p in panels], [p["predicted"] for p in panels]
    assert truth[:2] == predicted[:2] and predicted[2] == ""
    # labelled, so that a shown reference equal to the prediction does not read as cherry-picked
    assert [p["truth_label"] for p in panels] == ["GT (the reference it equals)"] * 2 + ["GT (first of 5 references)"]
    assert captioning.panel_title(panels[2], "lstm").splitlines()[1].startswith("GT (first of 5 references): ")
    assert truth[2] == decode_captions(captions[np.flatnonzero(image_idxs == chosen[2])[0]], data["idx_to_word"])


@pytest.mark.slow
@pytest.mark.parametrize("script", ["training.py", "inference.py", "features_extraction.py"])
def test_help_and_flag_errors_import_no_torch(script):
    """Break caught: --help took 2-3 s idle (about 20 s on a loaded machine) because torch was
    imported before the flags were read."""
    code = (f"import runpy, sys; sys.argv = [{script!r}, '--help']\n"
            "try:\n    runpy.run_path(" + repr(str(ROOT / script)) + ", run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('torch loaded' if 'torch' in sys.modules else 'no torch')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.stdout.strip().endswith("no torch"), result.stdout[-300:] + result.stderr[-300:]
    assert "usage:" in result.stdout

