"""features_extraction.py on a handful of rendered images (random VGG16 weights), and the sample dataset."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import features_extraction
from core.data.coco_utils import SAMPLE_DIR, decode_captions, load_coco_data, tokenize
from core.datasets import make_sample_dataset as sample
from core.data.features import TRANSFORM_FILE, ensure_transform, extract_fc7, load_transform, project

ROOT = Path(__file__).resolve().parents[1]
PCA_DIM = 8


def build(src, out, *extra):
    return features_extraction.main([
        "--train_annotations", str(src / "annotations" / "captions_train.json"),
        "--train_images", str(src / "images" / "train"),
        "--val_annotations", str(src / "annotations" / "captions_val.json"),
        "--val_images", str(src / "images" / "val"),
        "--out_dir", str(out), "--weights", "random", "--seed", "0", "--pca_dim", str(PCA_DIM),
        "--min_word_count", "1", "--batch_size", "8", "--device", "cpu", "--quiet", *extra])


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    src = tmp_path_factory.mktemp("rendered")
    sample.write_split(src, "train", 12)
    sample.write_split(src, "val", 5)
    return src


@pytest.fixture(scope="module")
def built(rendered):
    out = rendered / "dataset"  # inside the source folder, so URLs are written relative to it
    build(rendered, out)
    return out


@pytest.mark.slow
def test_layout_shapes_and_dtypes(built):
    with h5py.File(built / "coco2014_captions.h5") as f:
        assert f["train_captions"].shape == (60, 17) and f["train_captions"].dtype == np.int32
        assert f["train_image_idxs"].dtype == np.int32 and f["val_captions"].shape == (25, 17)
    for split, n in (("train", 12), ("val", 5)):
        with h5py.File(built / f"{split}2014_vgg16_fc7.h5") as f:
            assert f["features"].shape == (n, 4096) and f["features"].dtype == np.float32
            assert (f["features"][()] >= 0).all()  # after ReLU
        with h5py.File(built / f"{split}2014_vgg16_fc7_pca.h5") as f:
            assert f["features"].shape == (n, PCA_DIM) and f["features"].dtype == np.float32
    data = load_coco_data(built)
    assert data["train_features"].shape == (12, PCA_DIM)
    assert load_coco_data(built, pca_features=False)["val_features"].shape == (5, 4096)
    assert all(Path(built / u).is_file() for u in data["val_urls"])  # relative to the dataset folder
    assert not any(p.name.startswith(".") for p in built.iterdir())  # no temporary leftovers


@pytest.mark.slow
def test_pca_is_fitted_on_train_only_and_applied_to_val(built):
    transform, info = load_transform(built / TRANSFORM_FILE)
    assert info["vgg16"] == {"weights": "random", "seed": 0} and info["fitted_on"] == "train"
    fc7 = {s: h5py.File(built / f"{s}2014_vgg16_fc7.h5")["features"][()] for s in ("train", "val")}
    pca = {s: h5py.File(built / f"{s}2014_vgg16_fc7_pca.h5")["features"][()] for s in ("train", "val")}
    np.testing.assert_allclose(transform["mean"], fc7["train"].mean(axis=0), rtol=1e-4, atol=1e-6)
    components = transform["components"].astype(np.float64)
    np.testing.assert_allclose(components @ components.T, np.eye(PCA_DIM), atol=1e-4)
    for split in ("train", "val"):
        np.testing.assert_allclose(project(fc7[split], transform), pca[split], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pca["train"].mean(axis=0), 0, atol=1e-3 * np.abs(pca["train"]).max())


@pytest.mark.slow
def test_captions_round_trip_through_the_vocabulary(rendered, built):
    data = load_coco_data(built)
    vocab = json.loads((built / "coco2014_vocab.json").read_text())
    assert vocab["idx_to_word"][:4] == ["<NULL>", "<START>", "<END>", "<UNK>"]
    assert all(vocab["word_to_idx"][w] == i for i, w in enumerate(vocab["idx_to_word"]))
    ann = json.loads((rendered / "annotations" / "captions_train.json").read_text())
    order = {im["id"]: r for r, im in enumerate(sorted(ann["images"], key=lambda im: im["id"]))}
    decoded = decode_captions(data["train_captions"], data["idx_to_word"])
    assert decoded == [" ".join(tokenize(a["caption"])) for a in ann["annotations"]]
    assert data["train_image_idxs"].tolist() == [order[a["image_id"]] for a in ann["annotations"]]


@pytest.mark.slow
def test_long_captions_are_cut_and_rare_words_become_unk(rendered, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(rendered, src, ignore=shutil.ignore_patterns("dataset"))
    ann_path = src / "annotations" / "captions_train.json"
    ann = json.loads(ann_path.read_text())
    ann["annotations"][0]["caption"] = "A Very, very LONG caption " + "word " * 30
    ann_path.write_text(json.dumps(ann))
    build(src, tmp_path / "out", "--max_length", "8", "--min_word_count", "2")
    data = load_coco_data(tmp_path / "out")
    assert data["train_captions"].shape[1] == 8
    assert decode_captions(data["train_captions"][0], data["idx_to_word"]) == "a very very <UNK> <UNK> word"  # "long", "caption": seen once
    assert data["train_captions"][0, -1] == data["word_to_idx"]["<END>"]


def _expect_user_error(capsys, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(f in err[0] for f in fragments), err


@pytest.mark.slow
def test_bad_inputs_are_named_and_leave_nothing(rendered, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(rendered, src, ignore=shutil.ignore_patterns("dataset"))
    out = tmp_path / "out"

    (src / "images" / "val" / "000002.png").unlink()
    with pytest.raises(SystemExit) as e:
        build(src, out)
    assert e.value.code == 2
    _expect_user_error(capsys, "missing image", "000002.png")
    assert not out.exists() or not any(out.iterdir())

    (src / "images" / "val" / "000002.png").write_bytes(b"this is not a png")
    with pytest.raises(SystemExit):
        build(src, out)
    _expect_user_error(capsys, "cannot read image", "000002.png")
    assert not out.exists() or not any(out.iterdir())

    ann_path = src / "annotations" / "captions_train.json"
    ann = json.loads(ann_path.read_text())
    ann["annotations"].append({"id": 999, "image_id": 4242, "caption": "a ghost"})
    ann_path.write_text(json.dumps(ann))
    with pytest.raises(SystemExit):
        build(src, out)
    _expect_user_error(capsys, "unknown image id 4242")

    build(src, out, "--skip_bad_images")
    report = capsys.readouterr().out
    assert "skipping 1 captions of 1 unknown image ids" in report and "skipping 1 unreadable val images" in report
    data = load_coco_data(out)
    assert data["val_features"].shape[0] == 4 and data["val_captions"].shape[0] == 20
    assert data["train_captions"].shape[0] == 60
    assert "000002.png" not in " ".join(data["val_urls"])


@pytest.mark.slow
def test_caption_own_images_end_to_end(built, rendered, tmp_path):
    def run(script, *args):
        return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    result = run("training.py", "--model", "lstm", "--data_dir", built, "--epochs", 2, "--hidden_dim", 16,
                 "--wordvec_dim", 16, "--batch_size", 20, "--quiet")
    assert result.returncode == 0, result.stderr
    images = [rendered / "images" / "val" / "000000.png", rendered / "images" / "val" / "000003.png"]
    result = run("inference.py", "--model", "lstm", "--data_dir", built, "--image", *images)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("predicted:") == 2 and "truth:" not in result.stdout
    assert "RANDOM weights (seed 0)" in result.stdout
    assert (tmp_path / "outputs" / "lstm_checkpoint_images_greedy_captions.png").stat().st_size > 1000
    assert "could not be fetched" not in result.stdout

    result = run("inference.py", "--model", "lstm", "--data_dir", built, "--image", tmp_path / "nope.jpg")
    assert result.returncode == 2 and "nope.jpg not found" in result.stderr

    other = tmp_path / "other"  # same vocabulary, but a transform that belongs to another dataset
    shutil.copytree(built, other)
    transform, info = load_transform(other / TRANSFORM_FILE)
    info["dataset_id"] = "0123456789abcdef"
    from core.data.features import save_transform

    save_transform(other / TRANSFORM_FILE, transform, info)
    result = run("inference.py", "--model", "lstm", "--data_dir", other, "--image", images[0])
    assert result.returncode == 2 and f"trained on another dataset ({built.resolve()})" in result.stderr
    assert f"pass --data_dir {built.resolve()}" in result.stderr, result.stderr


def test_cs231n_data_gets_its_transform_recovered_once(tmp_path, capsys):
    from core.datasets.make_fake_coco import write_fake_coco
    from core.util.errors import UserError

    with pytest.raises(UserError, match="too few"):
        ensure_transform(write_fake_coco(tmp_path / "small", train_images=40, fc7_dim=64), progress=False)
    capsys.readouterr()
    data_dir = write_fake_coco(tmp_path / "cs231n", train_images=200, fc7_dim=64)
    transform, info = ensure_transform(data_dir, progress=False)
    assert "fitting it once" in capsys.readouterr().out
    assert info["vgg16"] == {"weights": "imagenet"} and "different VGG16 port" in info["note"]
    assert info["held_out_r2"] > 0.999
    fc7 = h5py.File(data_dir / "val2014_vgg16_fc7.h5")["features"][()]
    pca = h5py.File(data_dir / "val2014_vgg16_fc7_pca.h5")["features"][()]
    np.testing.assert_allclose(project(fc7, transform), pca, rtol=1e-3, atol=1e-3)
    ensure_transform(data_dir, progress=False)
    assert "fitting" not in capsys.readouterr().out  # saved: fitted only once


def test_the_sample_datasets_object_regions_are_its_detectors():
    """The bundled boxes came from the bundled detector: run on test images, it finds the same
    boxes and, through the dataset's PCA, the same features (float16 files). Breaks caught: the
    detector's features taken of other boxes than it found (seen: shifted by 4 pixels); a dataset
    rebuilt with the plain proposer, or with another detector than the one beside it."""
    from core.data.box_sources import compute_box_regions
    from core.data.feature_kinds import FEATURE_KINDS

    transform, info = FEATURE_KINDS["boxes"].transform(SAMPLE_DIR)
    assert info["boxes"]["source"] == "learned" and info["boxes"]["path"] == "bottom_up_detector.npz"
    paths = [SAMPLE_DIR / "images" / "test" / f"{i:06d}.png" for i in range(4)]
    regions, bad = compute_box_regions(paths, transform, info)
    committed = load_coco_data(SAMPLE_DIR, features="boxes")["test_features"][np.arange(4)]
    assert not bad
    np.testing.assert_array_equal(regions.mask, committed.mask)
    np.testing.assert_allclose(regions.geometry[regions.mask], committed.geometry[committed.mask],
                               atol=1e-6)
    scale = np.abs(committed.features[committed.mask]).max()
    np.testing.assert_allclose(regions.features[regions.mask], committed.features[committed.mask],
                               atol=2e-3 * scale)


@pytest.mark.slow
def test_rebuilding_a_slice_of_the_sample_dataset_reproduces_it(tmp_path):
    for split in ("train", "val"):
        path = sample.write_split(tmp_path, split, 3)
        committed = json.loads((SAMPLE_DIR / "annotations" / f"captions_{split}.json").read_text())
        rebuilt = json.loads(path.read_text())
        assert rebuilt["annotations"] == committed["annotations"][:15]
        for i in range(3):
            mine = np.asarray(sample.render(sample.make_scene(split, i)))
            with_committed = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(
                SAMPLE_DIR / "images" / split / f"{i:06d}.png").convert("RGB"))
            np.testing.assert_array_equal(mine, with_committed)
    transform, info = load_transform(SAMPLE_DIR / TRANSFORM_FILE)
    assert info["vgg16"] == {"weights": "random", "seed": 0}
    paths = [tmp_path / "images" / s / f"{i:06d}.png" for s in ("train", "val") for i in range(3)]
    fc7, bad = extract_fc7(paths, info["vgg16"], progress=False)
    assert not bad
    committed = np.concatenate([h5py.File(SAMPLE_DIR / f"{s}2014_vgg16_fc7_pca.h5")["features"][:3]
                                for s in ("train", "val")])
    np.testing.assert_allclose(project(fc7, transform), committed, rtol=1e-3, atol=1e-3 * np.abs(committed).max())


def test_sample_dataset_content():
    data = load_coco_data(SAMPLE_DIR)
    assert data["train_features"].shape == (2000, 512) and data["val_features"].shape == (500, 512)
    assert data["train_captions"].shape[0] == 5 * 2000 and data["val_captions"].shape[0] == 5 * 500
    words = set(data["idx_to_word"])
    assert set(sample.COLORS) <= words and set(sample.SHAPES) <= words
    assert {"left", "right", "above", "below", "small", "large"} <= words
    texts = decode_captions(data["train_captions"][:5], data["idx_to_word"])
    assert len(set(texts)) == 5  # five different phrasings of one image
    files = [p for p in SAMPLE_DIR.rglob("*") if p.is_file() and not p.name.endswith("_fc7.h5")]
    grid = sum(p.stat().st_size for p in files if "_grid_" in p.name)
    boxes = sum(p.stat().st_size for p in files if "_boxes_" in p.name)
    detector = (SAMPLE_DIR / "bottom_up_detector.npz").stat().st_size
    assert sum(p.stat().st_size for p in files) - grid - boxes - detector <= 16 * 2 ** 20
    assert grid <= 20 * 2 ** 20  # the attention decoders' region features: 3,000 images x 49 x 64 float16
    assert boxes <= 2 * 2 ** 20  # up to 2 boxes of 128 float16 each, and their PCA (128 x 256)
    assert detector <= 4 * 2 ** 20  # the bottom-up detector that found them: 2.0 M float16 weights
    assert sum(p.stat().st_size for p in files) <= 50 * 10 ** 6  # the whole committed dataset
    regions = load_coco_data(SAMPLE_DIR, features="grid")
    assert regions["train_features"].shape == (2000, 49, 64) and regions["train_features"].dtype == np.float16
    assert regions["dataset_id"] == data["dataset_id"]  # the same dataset, whichever features are read
    objects = load_coco_data(SAMPLE_DIR, features="boxes")
    counts = objects["train_features"].mask.sum(axis=1)  # the proposer found every object
    np.testing.assert_array_equal(counts, [len(sample.make_scene("train", i)["objects"]) for i in range(2000)])


def test_incremental_pca_spans_the_same_subspace_as_full_pca():
    from core.data.features import fit_pca

    rng = np.random.default_rng(0)
    X = (rng.standard_normal((530, 6)) * [9, 7, 5, 3, 2, 1]) @ rng.standard_normal((6, 40))
    X = (X + 0.01 * rng.standard_normal((530, 40)) + 3).astype(np.float32)
    full = fit_pca(X, 4, progress=False)
    chunked = fit_pca(X, 4, chunk_rows=100, progress=False)  # the 30-row tail is merged into the last chunk
    np.testing.assert_allclose(chunked["mean"], full["mean"], rtol=1e-4, atol=1e-4)
    overlap = np.abs(chunked["components"] @ full["components"].T)  # same directions up to sign
    np.testing.assert_allclose(np.diag(overlap), 1.0, atol=1e-3)


def _annotations(folder, images, captions):
    """Write a COCO-format captions file: images [(id, file_name)], captions [(image_id, text)] -> path."""
    path = folder / "captions.json"
    path.write_text(json.dumps({"images": [{"id": i, "file_name": f} for i, f in images],
                                "annotations": [{"id": k, "image_id": i, "caption": c}
                                                for k, (i, c) in enumerate(captions)]}, ensure_ascii=False),
                    encoding="utf-8")
    return path


def _image_folder(tmp_path, names):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_duplicate_image_ids_with_different_files_are_an_error(tmp_path):
    from core.data.builder import read_annotations
    from core.util.errors import UserError

    folder = _image_folder(tmp_path, ["a.png", "b.png", "c.png"])
    same_twice = _annotations(tmp_path, [(1, "a.png"), (1, "a.png"), (2, "b.png")], [(1, "x"), (2, "y")])
    paths, captions, idxs = read_annotations(same_twice, folder)
    assert [Path(p).name for p in paths] == ["a.png", "b.png"] and list(idxs) == [0, 1]
    clash = _annotations(tmp_path, [(1, "a.png"), (2, "b.png"), (1, "c.png"), (7, "a.png"), (7, "b.png")],
                         [(1, "x"), (2, "y")])
    with pytest.raises(UserError) as e:
        read_annotations(clash, folder)
    assert "2 image id(s) are listed with different file names" in str(e.value)
    assert "ids 1, 7" in str(e.value) and "id 1: a.png, c.png" in str(e.value)


def test_empty_captions_are_dropped_and_counted(tmp_path):
    from core.data.builder import read_annotations
    from core.util.errors import UserError

    folder = _image_folder(tmp_path, ["a.png", "b.png"])
    log = []
    path = _annotations(tmp_path, [(1, "a.png"), (2, "b.png")], [(1, "a cat"), (1, ""), (2, " ?! "), (2, "a dog")])
    paths, captions, idxs = read_annotations(path, folder, log=log.append)
    assert captions == ["a cat", "a dog"] and list(idxs) == [0, 1]
    assert any("dropped 2 empty caption(s)" in line for line in log)
    only_empty = _annotations(tmp_path, [(1, "a.png")], [(1, ""), (1, "...")])
    with pytest.raises(UserError, match="no captions left after dropping 2 empty ones"):
        read_annotations(only_empty, folder, log=log.append)


def test_tokenizer_keeps_unicode_letters_and_counts_what_it_drops():
    from core.data.coco_utils import dropped_characters

    assert tokenize("A Café near the Zoo, isn't it?") == ["a", "café", "near", "the", "zoo", "isn't", "it"]
    assert tokenize("cafe\u0301") == ["café"]  # decomposed accent: NFC first
    assert tokenize("Straße über 2 Brücken") == ["straße", "über", "2", "brücken"]
    assert tokenize("一只猫") == ["一", "只", "猫"]
    assert tokenize("кошка спит") == ["кошка", "спит"]
    caption = "Hello, world... (really)!"
    assert dropped_characters(caption, tokenize(caption)) == 7


@pytest.mark.slow
def test_unicode_captions_reach_the_vocabulary_and_dropped_characters_are_reported(rendered, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(rendered, src, ignore=shutil.ignore_patterns("dataset"))
    for split in ("train", "val"):
        path = src / "annotations" / f"captions_{split}.json"
        ann = json.loads(path.read_text())
        ann["annotations"][0]["caption"] = "Un café, près du 猫!"
        path.write_text(json.dumps(ann, ensure_ascii=False), encoding="utf-8")
    build(src, tmp_path / "out")
    out = capsys.readouterr().out
    assert "train: 2 punctuation/symbol characters dropped" in out and "val: 2 punctuation" in out
    data = load_coco_data(tmp_path / "out")
    assert {"café", "près", "猫"} <= set(data["idx_to_word"])
    assert decode_captions(data["train_captions"][0], data["idx_to_word"]) == "un café près du 猫"


@pytest.mark.slow
def test_pca_dim_is_checked_before_any_image_is_read(rendered, tmp_path, capsys, monkeypatch):
    import core.data.builder

    def no_extraction(*args, **kwargs):
        raise AssertionError("VGG16 ran before the --pca_dim check")

    monkeypatch.setattr(core.data.builder, "extract_fc7", no_extraction)
    with pytest.raises(SystemExit):
        build(rendered, tmp_path / "out", "--pca_dim", "13")
    _expect_user_error(capsys, "--pca_dim 13 needs at least 13 training images", "the train split has 12")


@pytest.mark.slow
def test_a_decompression_bomb_is_a_one_line_error(built, tmp_path, capsys, monkeypatch):
    import core.data.features
    import core.evaluation.captions
    import inference
    from PIL import Image

    from core.model.checkpoint import save_checkpoint
    from core.model.rnn_model import CaptioningRNN

    vocab = json.loads((built / "coco2014_vocab.json").read_text())
    model = CaptioningRNN(vocab["word_to_idx"], input_dim=PCA_DIM, wordvec_dim=4, hidden_dim=4, seed=0)
    checkpoint = tmp_path / "m.npz"
    save_checkpoint(model, checkpoint)
    bomb = tmp_path / "bomb.png"
    Image.new("RGB", (300, 300)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300 // 3)  # over twice the limit: PIL refuses it
    with pytest.raises(SystemExit):
        inference.main(["--model", "rnn", "--checkpoint", str(checkpoint), "--data_dir", str(built),
                        "--image", str(bomb), "--out_dir", str(tmp_path)])
    _expect_user_error(capsys, "cannot read image", "bomb.png", "DecompressionBombError")


@pytest.mark.slow
def test_a_full_disk_while_writing_a_dataset_leaves_the_folder_as_it_was(rendered, tmp_path, capsys, monkeypatch):
    import subprocess

    import core.data.builder

    out = tmp_path / "disk"
    out.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(out)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (out / "keep.txt").write_text("a previous file")
        fc7 = np.random.default_rng(0).random((64, 4096), dtype=np.float32)  # 1 MiB per split: cannot fit
        monkeypatch.setattr(core.data.builder, "extract_fc7", lambda paths, *a, **k: (fc7[:len(paths)], {}))
        with pytest.raises(SystemExit):
            build(rendered, out)
        _expect_user_error(capsys, f"cannot write the dataset into {out}", "No space left on device")
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)


@pytest.mark.slow
def test_two_processes_extract_the_same_dataset_as_one(rendered, built, tmp_path):
    """torchrun: each rank runs VGG16 on every other image, rank 0 gathers, fits the PCA and writes."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run([
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(port), str(ROOT / "features_extraction.py"),
        "--train_annotations", str(rendered / "annotations" / "captions_train.json"),
        "--train_images", str(rendered / "images" / "train"),
        "--val_annotations", str(rendered / "annotations" / "captions_val.json"),
        "--val_images", str(rendered / "images" / "val"), "--out_dir", str(tmp_path / "two"), "--weights", "random",
        "--seed", "0", "--pca_dim", str(PCA_DIM), "--min_word_count", "1", "--batch_size", "8", "--device", "cpu",
        "--quiet"], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote ") == 1
    for name in ("train2014_vgg16_fc7.h5", "val2014_vgg16_fc7.h5", "train2014_vgg16_fc7_pca.h5",
                 "val2014_vgg16_fc7_pca.h5"):
        with h5py.File(built / name) as one, h5py.File(tmp_path / "two" / name) as two:
            np.testing.assert_allclose(two["features"][()], one["features"][()], rtol=1e-4, atol=1e-4, err_msg=name)
    with h5py.File(built / "coco2014_captions.h5") as one, h5py.File(tmp_path / "two" / "coco2014_captions.h5") as two:
        for key in one:
            np.testing.assert_array_equal(two[key][()], one[key][()])


def test_a_failure_while_moving_the_new_dataset_in_puts_the_old_one_back(tmp_path, monkeypatch):
    """Break caught: the files moved into place one at a time with no way back, which leaves the old
    and the new dataset mixed when a move fails part-way."""
    import os

    import core.data.builder as builder

    out, new = tmp_path / "out", tmp_path / "new"
    out.mkdir()
    new.mkdir()
    names = ("coco2014_captions.h5", "coco2014_vocab.json", "train2014_vgg16_fc7_pca.h5")
    for name in names:
        (out / name).write_text(f"old {name}")
        (new / name).write_text(f"new {name}")
    (out / "images").mkdir()  # not a dataset file: left alone
    real, moves_in = os.replace, []

    def replace(src, dst):
        if Path(src).parent == new:
            moves_in.append(src)
            if len(moves_in) == 2:
                raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(builder.os, "replace", replace)
    with pytest.raises(OSError):
        builder._replace_all(new, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ("images",))
    assert {name: (out / name).read_text() for name in names} == {name: f"old {name}" for name in names}
    monkeypatch.setattr(builder.os, "replace", real)
    (new / ".previous").rmdir()
    builder._replace_all(new, out)  # without a failure: all new
    assert {name: (out / name).read_text() for name in names} == {name: f"new {name}" for name in names}


@pytest.mark.slow
def test_own_images_run_vgg16_on_the_requested_device_for_every_decoder(built, tmp_path, capsys, monkeypatch):
    """Break caught: --device reaching VGG16 only for the torch decoders (a numpy decoder's images went
    through VGG16 on the CPU whatever --device said). The "meta" device stands in for a GPU."""
    import core.data.features
    import core.evaluation.captions
    import inference
    from core.model.checkpoint import save_checkpoint
    from core.model.rnn_model import CaptioningRNN

    vocab = json.loads((built / "coco2014_vocab.json").read_text())
    checkpoint = tmp_path / "m.npz"
    save_checkpoint(CaptioningRNN(vocab["word_to_idx"], input_dim=PCA_DIM, wordvec_dim=4, hidden_dim=4, seed=0),
                    checkpoint)
    devices = []

    def fake_fc7(paths, spec, batch_size, device, progress, grid_size=None):
        devices.append(device)
        return np.zeros((len(paths), 4096), dtype=np.float32), {}

    monkeypatch.setattr(core.data.features, "extract_fc7", fake_fc7)
    image = next((built.parent / "images" / "val").glob("*.png"))
    inference.main(["--model", "rnn", "--checkpoint", str(checkpoint), "--data_dir", str(built), "--image",
                    str(image), "--device", "meta", "--out_dir", str(tmp_path)])
    assert devices == ["meta"]


@pytest.mark.slow
def test_the_sample_dataset_builder_writes_a_loadable_dataset(tmp_path):
    """make_sample_dataset renders the scenes, trains the bottom-up detector on them into the
    dataset's folder, and builds the layout with its regions through core/data/builder.py (not
    through the features_extraction script)."""
    sample.main(["--out_dir", str(tmp_path), "--train_images", "6", "--val_images", "3", "--test_images", "2",
                 "--pca_dim", "4", "--grid_pca_dim", "3", "--box_pca_dim", "3", "--box_side", "64"])
    data = load_coco_data(tmp_path)
    assert data["train_features"].shape == (6, 4) and data["val_captions"].shape == (15, 17)
    assert data["test_captions"].shape == (10, 17)
    assert load_coco_data(tmp_path, features="grid")["test_features"].shape == (2, 49, 3)
    boxes = load_coco_data(tmp_path, features="boxes")["test_features"]
    assert boxes.features.shape[-1] == 3 and (boxes.mask.sum(axis=1) >= 1).all()
    from core.data.bottom_up_detector import load_detector
    from core.data.feature_kinds import FEATURE_KINDS

    _, extra = load_detector(tmp_path / "bottom_up_detector.npz")  # trained here, on the 6 scenes
    assert extra["train_images"] == 6 and set(extra["scores"]) == {"test", "test varied"}
    assert extra["epochs"] == 6 and len(extra["losses"]) == 6  # trained as train_detector does
    info = FEATURE_KINDS["boxes"].transform(tmp_path)[1]["boxes"]
    assert (info["source"], info["path"], info["threshold"]) == ("learned", "bottom_up_detector.npz", 0.5)
    assert len(data["train_urls"]) == 6 and (tmp_path / TRANSFORM_FILE).is_file()


def test_captions_that_are_not_strings_are_refused_with_their_annotation(tmp_path):
    """Break caught: a null caption read as the word "none", a number as a word."""
    import core.data.builder as builder
    from core.util.errors import UserError

    (tmp_path / "a.png").write_bytes(b"")
    for caption in (None, 7, ["a", "cat"]):
        ann = {"images": [{"id": 1, "file_name": "a.png"}],
               "annotations": [{"id": 10, "image_id": 1, "caption": "a cat"},
                               {"id": 11, "image_id": 1, "caption": caption}]}
        (tmp_path / "captions.json").write_text(json.dumps(ann))
        with pytest.raises(UserError, match=r"1 caption\(s\) are not strings \(annotation id 11, image 1: "
                                            + re.escape(json.dumps(caption))):
            builder.read_annotations(tmp_path / "captions.json", tmp_path)


def test_a_vocabulary_with_no_word_is_refused_before_vgg16_runs(tmp_path, monkeypatch):
    """Break caught: --min_word_count above every count wrote a dataset of <START> <UNK> ... <END>."""
    import core.data.builder as builder
    from core.util.errors import UserError

    monkeypatch.setattr(builder, "extract_fc7", lambda *a, **k: pytest.fail("VGG16 ran"))
    for split in ("train", "val"):
        sample.write_split(tmp_path, split, 3)
    splits = {s: (tmp_path / "annotations" / f"captions_{s}.json", tmp_path / "images" / s) for s in ("train", "val")}
    with pytest.raises(UserError, match="no word of the train captions occurs 1000 times .* smaller --min_word_count"):
        builder.build_dataset(splits, tmp_path / "out", {"weights": "random", "seed": 0}, min_word_count=1000,
                              pca_dim=2, log=lambda *a: None, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_killed_builds_temporary_folder_is_removed_by_the_next_build(tmp_path):
    """Break caught: the .build_* folder of a killed run (up to 1-2 GB at COCO size) kept for ever;
    the folder of a build still running is left alone."""
    import os

    import core.data.builder as builder

    stale, running = tmp_path / ".build_999999999_x", tmp_path / f".build_{os.getpid()}_y"
    for folder in (stale, running, tmp_path / ".build_old-style"):
        folder.mkdir()
        (folder / "train2014_vgg16_fc7.h5").write_bytes(b"partial")
    assert sorted(builder.remove_stale_builds(tmp_path)) == [".build_999999999_x", ".build_old-style"]
    assert [p.name for p in tmp_path.iterdir()] == [running.name]


def test_a_transform_file_that_is_not_an_npz_is_named_without_suggesting_to_unpickle(tmp_path):
    """Break caught: numpy's own message for a non-npz file, which invites the user to allow unpickling."""
    from core.util.errors import UserError

    path = tmp_path / TRANSFORM_FILE
    path.write_text("not a transform")
    with pytest.raises(UserError) as e:
        load_transform(path)
    assert "is not a feature transform file" in str(e.value) and "pickle" not in str(e.value)


def test_own_images_with_a_sample_dataset_model_say_what_it_knows(tmp_path, capsys, monkeypatch):
    """Break caught: a photograph captioned with confidence by a model that has only seen the sample
    dataset's rendered shapes, with no word that the caption means nothing."""
    import core.data.features
    import core.evaluation.captions
    import inference
    from core.model.checkpoint import save_checkpoint
    from core.data.coco_utils import load_vocab
    from core.model.rnn_model import CaptioningRNN

    _, word_to_idx = load_vocab(SAMPLE_DIR)
    checkpoint = tmp_path / "m.npz"
    save_checkpoint(CaptioningRNN(word_to_idx, input_dim=512, wordvec_dim=4, hidden_dim=4, seed=0), checkpoint)
    monkeypatch.setattr(core.data.features, "extract_fc7", lambda paths, *a, **k: (np.zeros((len(paths), 4096), np.float32), {}))
    monkeypatch.setattr(core.evaluation.captions, "save_caption_grid", lambda images, titles, path, suptitle, **k: shown.append(suptitle))
    shown = []
    photo = SAMPLE_DIR / "images" / "val" / "000000.png"
    inference.main(["--model", "rnn", "--checkpoint", str(checkpoint), "--data_dir", str(SAMPLE_DIR), "--image",
                    str(photo), "--device", "cpu", "--out_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "note: this model knows only the sample dataset's rendered scenes" in out
    assert "knows only the sample dataset's rendered scenes" in shown[0]  # and on the figure


def test_a_rebuild_removes_every_file_of_the_older_build_it_does_not_write(tmp_path):
    """Breaks caught: a folder rebuilt without --grid kept the old images' region files (an attention
    decoder then trained on regions of other images), and one rebuilt without a test split kept the
    old test2014_* files; the user's own files stay."""
    import core.data.builder as builder

    out, new = tmp_path / "out", tmp_path / "new"
    out.mkdir(), new.mkdir()
    old_build = ["coco2014_captions.h5", "train2014_vgg16_fc7_pca.h5", "train2014_vgg16_grid_pca.h5",
                 "val2014_vgg16_grid_pca.h5", "vgg16_grid_pca_transform.npz", "test2014_urls.txt",
                 "test2014_vgg16_fc7_pca.h5"]
    for name in old_build + ["notes.txt"]:
        (out / name).write_text(f"old {name}")
    for name in ("coco2014_captions.h5", "train2014_vgg16_fc7_pca.h5"):
        (new / name).write_text(f"new {name}")
    removed = builder._replace_all(new, out)
    assert removed == sorted(set(old_build) - {"coco2014_captions.h5", "train2014_vgg16_fc7_pca.h5"})
    assert sorted(p.name for p in out.iterdir()) == ["coco2014_captions.h5", "notes.txt",
                                                      "train2014_vgg16_fc7_pca.h5"]
    assert (out / "coco2014_captions.h5").read_text() == "new coco2014_captions.h5"
    assert {"train2014_vgg16_grid_pca.h5", "test2014_vgg16_fc7.h5", "val2014_urls.txt",
            "vgg16_fc7_pca_transform.npz"} <= builder.layout_files()


def test_a_folder_of_images_is_captioned_whole_with_its_results_files(tmp_path, capsys, monkeypatch):
    """Breaks caught: no way to caption a folder (neuraltalk2's -image_folder); a folder's captions
    not written, or not in the COCO results format; an unreadable file stopping the whole folder;
    other files taken for images."""
    import json
    import shutil

    import core.data.features
    import core.evaluation.captions
    import inference
    from core.data.coco_utils import load_vocab
    from core.model.checkpoint import save_checkpoint
    from core.model.rnn_model import CaptioningRNN
    from tests.helpers import one_line_error

    _, word_to_idx = load_vocab(SAMPLE_DIR)
    checkpoint = tmp_path / "m.npz"
    save_checkpoint(CaptioningRNN(word_to_idx, input_dim=512, wordvec_dim=4, hidden_dim=4, seed=0), checkpoint)
    folder = tmp_path / "photos"
    folder.mkdir()
    for k, name in enumerate(["000000391895.png", "000000522418.PNG", "broken.jpg"]):
        shutil.copy(SAMPLE_DIR / "images" / "val" / f"{k:06d}.png", folder / name)
    (folder / "notes.txt").write_text("not an image")
    calls = []

    def fake_fc7(paths, *a, progress=False, **k):
        calls.append((len(paths), progress))
        bad = {i: "cannot identify image file" for i, p in enumerate(paths) if p.endswith("broken.jpg")}
        return np.zeros((len(paths), 4096), np.float32), bad

    monkeypatch.setattr(core.data.features, "extract_fc7", fake_fc7)
    monkeypatch.setattr(core.evaluation.captions, "save_caption_grid", lambda images, titles, path, suptitle, **k: None)
    inference.main(["--model", "rnn", "--checkpoint", str(checkpoint), "--data_dir", str(SAMPLE_DIR),
                    "--image_folder", str(folder), "--num_images", "1", "--device", "cpu", "--out_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert calls == [(3, True)]  # the three images once, with a progress bar
    assert "skipped 1 unreadable file(s) of the folder" in out and "broken.jpg" in out
    written = json.loads((tmp_path / "m_photos_greedy_captions.json").read_text())
    captions = written["captions"]
    assert [c["file_name"] for c in captions] == ["000000391895.png", "000000522418.PNG"]
    assert written["checkpoint_path"] == str(checkpoint.resolve())
    results = json.loads((tmp_path / "m_photos_greedy_results.json").read_text())
    assert [r["image_id"] for r in results] == [391895, 522418]
    assert [r["caption"] for r in results] == [c["caption"] for c in captions]
    assert out.count("predicted:") == 1  # --num_images of them in the figure and printed
    # a same-named checkpoint elsewhere, on a folder of the same name: the first run's captions
    # are kept (break caught: replaced, one run after the other), before any image is read
    other = tmp_path / "other" / "m.npz"
    other.parent.mkdir()
    shutil.copy(checkpoint, other)
    calls.clear()
    flags = ["--model", "rnn", "--checkpoint", str(other), "--data_dir", str(SAMPLE_DIR), "--image_folder",
             str(folder), "--device", "cpu", "--out_dir", str(tmp_path)]
    page = tmp_path / "m_photos_greedy_captions.html"  # its results page: every image of the folder
    assert page.read_text().count('<article class="result"') == len(captions)
    one_line_error(capsys, lambda: inference.main(flags),
                   f"m_photos_greedy_captions.html belongs to the run of {checkpoint.resolve()}")
    page.unlink()  # the captions file is kept by its own record too
    one_line_error(capsys, lambda: inference.main(flags),
                   f"m_photos_greedy_captions.json belongs to the run of {checkpoint.resolve()}")
    assert calls == [] and json.loads((tmp_path / "m_photos_greedy_captions.json").read_text()) == written
    # a folder none of whose files can be read (break caught: empty captions, then a ValueError)
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "broken.jpg").write_text("not a JPEG")
    one_line_error(capsys, lambda: inference.main(
        ["--model", "rnn", "--checkpoint", str(checkpoint), "--data_dir", str(SAMPLE_DIR), "--image_folder",
         str(unreadable), "--device", "cpu", "--out_dir", str(tmp_path)]),
        "none of the 1 image file(s) could be read, e.g.")


@pytest.mark.slow
def test_resnet101_features_are_its_last_blocks_mean_and_cells(rendered):
    """Breaks caught: the pooled vector not the mean of the grid cells it is read with, a 14 x 14
    grid read from a 224-pixel crop (7 x 7 cells), the encoder of the spec ignored (VGG16's 4096)."""
    from core.data.features import extract_fc7, parse_weights

    paths = sorted((rendered / "images" / "val").glob("*.png"))[:2]
    spec = parse_weights("random", 0, encoder="resnet101")
    assert spec == {"weights": "random", "seed": 0, "encoder": "resnet101"}
    for grid_size in (7, 14):
        pooled, bad, grid = extract_fc7(paths, spec, grid_size=grid_size, progress=False)
        assert not bad and pooled.shape == (2, 2048) and grid.shape == (2, grid_size ** 2, 2048)
        np.testing.assert_allclose(pooled, grid.astype(np.float32).mean(axis=1), rtol=2e-3, atol=2e-3)
    alone, _ = extract_fc7(paths, spec, progress=False)
    np.testing.assert_allclose(alone, extract_fc7(paths, spec, grid_size=7, progress=False)[0], rtol=1e-6)


@pytest.mark.slow
def test_a_resnet101_dataset_without_pca_names_its_encoder_and_refuses_vgg16_checkpoints(rendered, built,
                                                                                        tmp_path, capsys):
    """Breaks caught: --encoder ignored, --pca_dim 0 refused or still reduced, the dataset's info not
    naming the encoder, a checkpoint trained on VGG16 features taken on ResNet-101 ones."""
    import inference
    import training
    from core.model.checkpoint import load_checkpoint
    from tests.helpers import one_line_error

    out = tmp_path / "resnet"
    build(rendered, out, "--encoder", "resnet101", "--pca_dim", "0")
    with h5py.File(out / "train2014_vgg16_fc7_pca.h5") as f:
        assert f["features"].shape == (12, 2048)
    _, info = load_transform(out / TRANSFORM_FILE)
    assert info["encoder"] == "resnet101" and info["vgg16"]["encoder"] == "resnet101"
    data = load_coco_data(out)
    assert data["encoder"] == "resnet101" and load_coco_data(built)["encoder"] == "vgg16"
    flags = ["--model", "rnn", "--epochs", "1", "--hidden_dim", "8", "--wordvec_dim", "8", "--quiet",
             "--recipe", "default", "--out_dir", str(tmp_path)]
    training.main([*flags, "--data_dir", str(built), "--checkpoint", str(tmp_path / "vgg.npz")])
    training.main([*flags, "--data_dir", str(out), "--checkpoint", str(tmp_path / "resnet.npz")])
    assert load_checkpoint(tmp_path / "resnet.npz")[1]["extra"]["encoder"] == "resnet101"
    capsys.readouterr()
    one_line_error(capsys, lambda: inference.main(["--model", "rnn", "--checkpoint", str(tmp_path / "vgg.npz"),
                                                   "--data_dir", str(out), "--split", "val", "--out_dir",
                                                   str(tmp_path)]),
                   "was trained on vgg16 features", f"{out} holds resnet101 features")
