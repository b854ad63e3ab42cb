"""The test split: built, loaded, scored by default, never used for selection; Karpathy split files;
scoring against raw COCO captions."""
import functools
import json

import h5py
import numpy as np
import pytest

import features_extraction
import inference
from core.evaluation import captions as captioning
from core.data.coco_utils import SAMPLE_DIR, data_splits, decode_captions, load_coco_data
from core.datasets import make_sample_dataset as sample
from core.util.errors import UserError
from core.evaluation.metrics import raw_references, score_captions
from core.data.features import TRANSFORM_FILE, load_transform, project
from core.data.karpathy import read_split_file
from tests.helpers import one_line_error

COMMON = ["--weights", "random", "--seed", "0", "--pca_dim", "4", "--min_word_count", "1", "--batch_size", "8",
          "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    src = tmp_path_factory.mktemp("rendered")
    for split, n in (("train", 6), ("val", 3), ("test", 2)):
        sample.write_split(src, split, n)
    return src


def _split_flags(src, *splits):
    return [x for s in splits for x in (f"--{s}_annotations", str(src / "annotations" / f"captions_{s}.json"),
                                        f"--{s}_images", str(src / "images" / s))]


def test_the_bundled_dataset_has_a_test_split_rendered_like_val_and_unlike_it():
    data = load_coco_data(SAMPLE_DIR)
    assert data_splits(data) == ("train", "val", "test")
    assert data["test_features"].shape == (500, 512) and data["test_captions"].shape == (2500, 17)
    committed = json.loads((SAMPLE_DIR / "annotations" / "captions_test.json").read_text())
    scene = sample.make_scene("test", 7)
    assert [a["caption"] for a in committed["annotations"] if a["image_id"] == 7] == sample.captions(scene)
    rows = np.flatnonzero(data["test_image_idxs"] == 7)
    assert decode_captions(data["test_captions"][rows], data["idx_to_word"]) == sample.captions(scene)
    assert scene != sample.make_scene("val", 7)  # its own scenes, not a copy of val's


@pytest.mark.slow
def test_a_test_split_is_built_projected_with_the_train_pca_and_loaded(rendered, tmp_path, capsys):
    out = tmp_path / "with_test"
    features_extraction.main(_split_flags(rendered, "train", "val", "test") + ["--out_dir", str(out)] + COMMON)
    data = load_coco_data(out)
    assert data_splits(data) == ("train", "val", "test")
    assert data["test_features"].shape == (2, 4) and data["test_captions"].shape == (10, 17)
    first = sample.captions(sample.make_scene("test", 0))
    assert decode_captions(data["test_captions"][:5], data["idx_to_word"]) == first
    assert "no test split" not in capsys.readouterr().out
    transform, info = load_transform(out / TRANSFORM_FILE)  # fitted on train: the test split only projected
    with h5py.File(out / "test2014_vgg16_fc7.h5") as f:
        np.testing.assert_allclose(project(f["features"][()], transform), data["test_features"], rtol=1e-5, atol=1e-5)
    assert info["fitted_on"] == "train"

    without = features_extraction.parse_args(_split_flags(rendered, "train", "val") + ["--out_dir", "o"])
    assert set(features_extraction.splits(without, print)) == {"train", "val"}
    assert "no test split (--split_file or --test_annotations)" in capsys.readouterr().out


def test_a_test_split_needs_both_its_flags(rendered, capsys):
    one_line_error(capsys, lambda: features_extraction.parse_args(
        _split_flags(rendered, "train", "val") + ["--test_images", "x", "--out_dir", "o"]),
        "--test_annotations and --test_images are needed together")
    one_line_error(capsys, lambda: features_extraction.parse_args(
        _split_flags(rendered, "train") + ["--out_dir", "o"]), "--val_annotations and --val_images")


SPLITS_OF_IMAGES = ["train", "restval", "val", "test", "restval", "val"]


def _karpathy_file(src, path, splits):
    """A split file in dataset_coco.json's format over the rendered images: splits[i] is image i's."""
    train = json.loads((src / "annotations" / "captions_train.json").read_text())
    images = []
    for k, split in enumerate(splits):
        sentences = [{"raw": a["caption"].capitalize() + ".", "tokens": a["caption"].split()}
                     for a in train["annotations"] if a["image_id"] == k]
        images.append({"filepath": "train2014", "filename": f"{k:06d}.png", "imgid": k, "cocoid": 1000 + k,
                       "split": split, "sentences": sentences, "sentids": list(range(5 * k, 5 * k + 5))})
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def test_a_karpathy_split_file_gives_restval_to_training(rendered, tmp_path):
    path = _karpathy_file(rendered, tmp_path / "dataset_coco.json", SPLITS_OF_IMAGES)
    splits = read_split_file(path, {"train2014": rendered / "images" / "train", "val2014": None}, None)
    assert set(splits) == {"train", "val", "test"}
    ids = {s: [im["id"] for im in ann["images"]] for s, (_, _, ann) in splits.items()}
    assert ids == {"train": [1000, 1001, 1004], "val": [1002, 1005], "test": [1003]}
    _, _, test = splits["test"]
    assert test["images"][0]["file_name"] == str(rendered / "images" / "train" / "000003.png")
    assert test["annotations"][0]["caption"] == sample.captions(sample.make_scene("train", 3))[0].capitalize() + "."


@pytest.mark.slow
def test_features_extraction_builds_the_karpathy_splits(rendered, tmp_path, capsys):
    path = _karpathy_file(rendered, tmp_path / "dataset_coco.json", SPLITS_OF_IMAGES)
    out = tmp_path / "karpathy"
    features_extraction.main(["--split_file", str(path), "--train_images", str(rendered / "images" / "train"),
                              "--out_dir", str(out)] + COMMON + ["--pca_dim", "2"])
    data = load_coco_data(out)
    assert [len(data[f"{s}_features"]) for s in ("train", "val", "test")] == [3, 2, 1]
    assert [u.rsplit("/", 1)[-1] for u in data["test_urls"]] == ["000003.png"]
    # raw sentences, tokenized (capitals and the full stop gone), words not in the 3 train images' captions <UNK>
    words = set(data["idx_to_word"])
    expected = [" ".join(w if w in words else "<UNK>" for w in c.split())
                for c in sample.captions(sample.make_scene("train", 3))]
    assert decode_captions(data["test_captions"], data["idx_to_word"]) == expected


def test_bad_split_files_are_named_in_one_line(rendered, tmp_path, capsys):
    good = _karpathy_file(rendered, tmp_path / "good.json", ["train", "val"])
    dirs = {"train2014": rendered / "images" / "train", "val2014": None}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [dict(json.loads(good.read_text())["images"][0], split="dev")]}))
    with pytest.raises(UserError, match="image 0 has split 'dev', not one of train, restval, val, test"):
        read_split_file(bad, dirs, None)
    bad.write_text(json.dumps({"images": [dict(json.loads(good.read_text())["images"][0], filepath="val2014")]}))
    with pytest.raises(UserError, match="lies in 'val2014', which no image folder was given for .pass --val_images"):
        read_split_file(bad, dirs, None)
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(UserError, match="is not a Karpathy split file"):
        read_split_file(bad, dirs, None)
    only_train = _karpathy_file(rendered, tmp_path / "train_only.json", ["train", "restval"])
    with pytest.raises(UserError, match="has no val images"):
        read_split_file(only_train, dirs, None)
    one_line_error(capsys, lambda: features_extraction.parse_args(
        ["--split_file", str(good), "--train_images", "x", "--train_annotations", "a.json", "--out_dir", "o"]),
        "--split_file gives the splits and their captions: drop --train_annotations")


def _raw_annotations(path, entries):
    """A COCO annotation file: entries [(id, file_name, flickr_url, [captions])]."""
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": f, "flickr_url": u, "coco_url": f"http://images.cocodataset.org/val2014/{f}"}
                   for i, f, u, _ in entries],
        "annotations": [{"id": 10 * i + k, "image_id": i, "caption": c}
                        for i, _, _, caps in entries for k, c in enumerate(caps)]}))
    return path


def test_raw_references_are_found_by_flickr_url_coco_url_or_file_name(tmp_path):
    path = _raw_annotations(tmp_path / "captions_val2014.json", [
        (1, "COCO_val2014_000000000001.jpg", "http://farm4.staticflickr.com/1/abc_z.jpg",
         ["A Dog, running on the beach in the morning light near the water's edge with a red ball."]),
        (2, "COCO_val2014_000000000002.jpg", "http://farm1.staticflickr.com/2/def_z.jpg", ["Two cats.", "A cat"])])
    urls = np.array(["http://farm1.staticflickr.com/2/def_z.jpg",  # the CS231n files list Flickr URLs
                     "images/val2014/COCO_val2014_000000000001.jpg",  # a built dataset lists paths
                     "http://images.cocodataset.org/val2014/COCO_val2014_000000000002.jpg"])
    refs, ids = raw_references(path, urls, [0, 1, 2])
    assert ids == {0: 2, 1: 1, 2: 2}  # the file's image ids, for the COCO results file
    assert refs[0] == refs[2] == ["two cats", "a cat"]
    assert refs[1] == ["a dog running on the beach in the morning light near the water's edge with a red ball"]
    assert len(refs[1][0].split()) == 18  # not cut to 15 words
    with pytest.raises(UserError, match="has no captions for 1 of the 2 images scored .e.g. other.jpg"):
        raw_references(path, np.array(["other.jpg", urls[0]]), [0, 1])
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(UserError, match="is not a COCO-format captions file"):
        raw_references(tmp_path / "broken.json", urls, [0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny RNN checkpoint trained on a copy of the bundled data's first images (with a test split)."""
    import training

    folder = tmp_path_factory.mktemp("eval")
    data_dir = folder / "data"
    data_dir.mkdir()
    data = load_coco_data(SAMPLE_DIR)
    with h5py.File(data_dir / "coco2014_captions.h5", "w") as f:
        for split, n in (("train", 40), ("val", 10), ("test", 8)):
            rows = np.flatnonzero(data[f"{split}_image_idxs"] < n)
            f[f"{split}_captions"] = data[f"{split}_captions"][rows]
            f[f"{split}_image_idxs"] = data[f"{split}_image_idxs"][rows]
            with h5py.File(data_dir / f"{split}2014_vgg16_fc7_pca.h5", "w") as g:
                g["features"] = data[f"{split}_features"][:n]
            (data_dir / f"{split}2014_urls.txt").write_text("\n".join(
                f"images/{split}/{i:06d}.png" for i in range(n)) + "\n")
    (data_dir / "coco2014_vocab.json").write_text((SAMPLE_DIR / "coco2014_vocab.json").read_text())
    checkpoint = folder / "rnn.npz"
    training.main(["--model", "rnn", "--data_dir", str(data_dir), "--epochs", "2", "--batch_size", "50",
                   "--checkpoint", str(checkpoint), "--out_dir", str(folder / "out"), "--hidden_dim", "16",
                   "--wordvec_dim", "8", "--recipe", "default"])
    return folder, data_dir, checkpoint


@pytest.fixture(autouse=True)
def no_meteor(monkeypatch):
    """METEOR starts Java for each scoring; the references and splits tested here do not need it."""
    monkeypatch.setattr(captioning, "score_captions", functools.partial(score_captions, meteor=False))


def _eval(folder, data_dir, checkpoint, *extra):
    inference.main(["--model", "rnn", "--checkpoint", str(checkpoint), "--data_dir", str(data_dir), "--eval",
                    "--out_dir", str(folder / "out"), *extra])


@pytest.mark.slow
def test_eval_scores_the_test_split_by_default_and_val_only_when_asked(trained, capsys):
    folder, data_dir, checkpoint = trained
    capsys.readouterr()
    _eval(folder, data_dir, checkpoint)
    out = capsys.readouterr().out
    assert "split test (8 images)" in out and "has no test split" not in out
    result = json.loads((folder / "out" / "rnn_test_greedy_eval.json").read_text())
    assert result["split"] == "test" and len(result["predictions"]) == 8
    assert result["predictions"][0]["url"] == "images/test/000000.png"
    _eval(folder, data_dir, checkpoint, "--split", "val")
    assert "split val (10 images)" in capsys.readouterr().out
    assert json.loads((folder / "out" / "rnn_val_greedy_eval.json").read_text())["split"] == "val"


@pytest.mark.slow
def test_eval_without_a_test_split_says_it_scores_val(trained, tmp_path, capsys):
    folder, data_dir, checkpoint = trained
    with h5py.File(data_dir / "coco2014_captions.h5", "r") as f, h5py.File(tmp_path / "coco2014_captions.h5", "w") as g:
        for name in ("train_captions", "train_image_idxs", "val_captions", "val_image_idxs"):
            g[name] = f[name][()]
    for name in ("train2014_vgg16_fc7_pca.h5", "val2014_vgg16_fc7_pca.h5", "train2014_urls.txt", "val2014_urls.txt",
                 "coco2014_vocab.json"):
        (tmp_path / name).write_bytes((data_dir / name).read_bytes())
    capsys.readouterr()
    _eval(folder, tmp_path, checkpoint)
    out = capsys.readouterr().out
    assert "has no test split: scoring val, the split that chose the best checkpoint" in out
    assert "split val (10 images)" in out
    one_line_error(capsys, lambda: _eval(folder, tmp_path, checkpoint, "--split", "test"),
                   "has no test split (it has train, val)")


@pytest.mark.slow
def test_eval_against_raw_references_scores_those_captions(trained, capsys):
    folder, data_dir, checkpoint = trained
    _eval(folder, data_dir, checkpoint, "--split", "test")
    own = json.loads((folder / "out" / "rnn_test_greedy_eval.json").read_text())
    # raw references: each image's first own reference, with capitals and a full stop
    entries = [(100 + p["image"], f"{p['image']:06d}.png", None, [p["references"][0].capitalize() + "."])
               for p in own["predictions"]]
    path = _raw_annotations(folder / "captions_test.json", entries)
    capsys.readouterr()
    _eval(folder, data_dir, checkpoint, "--split", "test", "--references", str(path))
    assert f"against the raw captions of {path} (8 for 8 images" in capsys.readouterr().out
    raw = json.loads((folder / "out" / "rnn_test_greedy_captions_test_eval.json").read_text())
    # the plain --eval's file is its own (break caught: --references replaced it)
    assert json.loads((folder / "out" / "rnn_test_greedy_eval.json").read_text()) == own
    assert [p["references"] for p in raw["predictions"]] == [[p["references"][0]] for p in own["predictions"]]
    assert raw["references"].startswith("the raw captions of")
    assert raw["scores"]["BLEU-4"] != own["scores"]["BLEU-4"]  # one reference instead of five
    one_line_error(capsys, lambda: inference.parse_args(["--model", "rnn", "--references", str(path)]),
                   "--references is the reference captions of --eval")


def test_raw_references_without_a_caption_or_of_another_split_are_refused(tmp_path):
    """Breaks caught: a null caption scored as the reference word "none", an empty one kept as '',
    and the references of another split accepted because file names repeat across splits (the
    bundled dataset's 000000.png is in train, val and test): CIDEr 0.0005 with exit 0."""
    urls = np.array(["images/val/000000.png", "images/val/000001.png"])
    own = {0: ["a large red circle"], 1: ["a small blue square on the left"]}
    right = _raw_annotations(tmp_path / "val.json", [(1, "000000.png", None, ["A large red circle."]),
                                                     (2, "000001.png", None, ["A small blue square on the left"])])
    assert raw_references(right, urls, [0, 1], own)[0] == {0: ["a large red circle"],
                                                           1: ["a small blue square on the left"]}
    other = _raw_annotations(tmp_path / "test.json", [(1, "000000.png", None, ["A green diamond."]),
                                                      (2, "000001.png", None, ["A small purple triangle"])])
    with pytest.raises(UserError, match="is not this split's: only 0 of the 2 images"):
        raw_references(other, urls, [0, 1], own)
    for caption, shown in ((None, "null"), ("", '""'), (" . ", '" . "')):
        bad = _raw_annotations(tmp_path / "bad.json", [(1, "000000.png", None, ["A large red circle", caption]),
                                                       (2, "000001.png", None, ["A small blue square"])])
        with pytest.raises(UserError, match=f"annotation 11 .image 1. has no caption .{shown}."):
            raw_references(bad, urls, [0, 1], own)


def _karpathy(path, entries):
    """A split file of entries [(split, filename, cocoid)], one caption each."""
    path.write_text(json.dumps({"images": [
        {"split": s, "filepath": "val2014", "filename": f, "cocoid": i, "sentences": [{"raw": f"a cat {i}"}]}
        for s, f, i in entries]}))
    return path


@pytest.mark.parametrize("entries, message", [
    ([("train", "a.jpg", 1), ("test", "a.jpg", 1), ("val", "b.jpg", 2)],
     "image a.jpg .id 1. is listed under both train and test"),
    ([("train", "a.jpg", 1), ("train", "a.jpg", 1), ("val", "b.jpg", 2)], "image a.jpg .id 1. is listed twice under train"),
    ([("restval", "a.jpg", 1), ("train", "c.jpg", 1), ("val", "b.jpg", 2)],
     "image c.jpg .id 1. is listed under both restval and train"),
])
def test_a_split_file_listing_an_image_twice_is_refused(entries, message, tmp_path):
    """Breaks caught: an image in both train and test built a test split of training images; one
    listed twice under train had its captions trained twice."""
    path = _karpathy(tmp_path / "dataset_coco.json", entries)
    with pytest.raises(UserError, match=message):
        read_split_file(path, {"val2014": "images", "train2014": "images"}, None)


def test_the_same_annotations_for_two_splits_are_refused(tmp_path, capsys):
    """Break caught: the val annotations passed again as --test_annotations were accepted."""
    val = _raw_annotations(tmp_path / "captions_val2014.json", [(1, "a.jpg", None, ["A cat."])])
    copy = tmp_path / "copy_of_val.json"
    copy.write_bytes(val.read_bytes())
    one_line_error(capsys, lambda: features_extraction.parse_args([
        "--train_annotations", "t.json", "--train_images", "t", "--val_annotations", str(val), "--val_images", "v",
        "--test_annotations", str(copy), "--test_images", "v", "--out_dir", "o"]),
        f"--val_annotations and --test_annotations are the same file ({copy})")
