"""Object regions as data (core/data/boxes.py, core/data/bottom_up.py): where boxes come from, their
features, the boxes layout, importing the precomputed bottom-up tsv files, and every bad input as
one line."""
import base64
import json
import re
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image

import features_extraction
from core.data import boxes as B
from core.data.box_sources import BoxSource
from core.data.bottom_up import import_bottom_up
from core.data.coco_utils import load_coco_data
from core.data.feature_kinds import FEATURE_KINDS
from core.data.features import load_transform, parse_weights
from core.data.regions import box_regions, check_boxes, geometry_boxes
from core.datasets import make_sample_dataset as sample
from core.util.errors import UserError
from tests.helpers import checkpoint_name, one_line_error


def _image(background, rects, size=(60, 40)):
    """An RGB image (H, W, 3) uint8 of that background with filled rectangles (x0, y0, x1, y1,
    colour), x1 and y1 exclusive."""
    image = np.zeros((size[1], size[0], 3), np.uint8) + np.array(background, np.uint8)
    for x0, y0, x1, y1, colour in rects:
        image[y0:y1, x0:x1] = colour
    return image


@pytest.mark.parametrize("background", [(20, 20, 20), (235, 230, 240), (120, 128, 125)])
def test_the_plain_background_proposer_finds_each_object_exactly(background):
    """Break caught: the background taken as a fixed colour (a dark or mid-grey one would then be
    all object), 4-connected parts (a diagonal object split), noise kept."""
    diagonal = [(30 + k, 5 + k, 31 + k, 6 + k, (250, 40, 40)) for k in range(8)]  # a thin stroke
    image = _image(background, [(5, 10, 15, 30, (40, 200, 40))] + diagonal
                   + [(50, 35, 51, 36, (0, 0, 255))])  # one pixel: noise below min_area
    np.testing.assert_array_equal(B.plain_background_boxes(image),
                                  [[5, 10, 15, 30], [30, 5, 38, 13]])
    assert B.plain_background_boxes(_image(background, [])).shape == (0, 4)


def test_the_proposer_boxes_the_sample_scenes_objects():
    for i in range(40):
        scene = sample.make_scene("train", i)
        found = B.plain_background_boxes(np.asarray(sample.render(scene)))
        assert len(found) == len(scene["objects"])
        for o in scene["objects"]:  # each object's box holds it and no more than its circle
            (x, y), r = o["center"], sample.RADII[o["size"]]
            assert sum((b[0] >= x - r) & (b[2] <= x + r + 1) & (b[0] < x < b[2])
                       & (b[1] >= y - r) & (b[3] <= y + r + 1) & (b[1] < y < b[3])
                       for b in found) == 1


def test_the_adaptive_count():
    scores = np.array([0.1, 0.9, 0.3, 0.25, 0.05, 0.5])
    np.testing.assert_array_equal(B.select_boxes(scores, 0.2, 2, 10), [1, 5, 2, 3])  # above 0.2
    np.testing.assert_array_equal(B.select_boxes(scores, 0.2, 5, 10), [1, 5, 2, 3, 0])  # min 5
    np.testing.assert_array_equal(B.select_boxes(scores, 0.2, 1, 2), [1, 5])  # max 2
    np.testing.assert_array_equal(B.select_boxes(scores, 0.95, 10, 20), [1, 5, 2, 3, 0, 4])


def test_boxes_are_clipped_to_the_image_and_an_image_of_none_gets_itself():
    clipped = B.clip_boxes([[-5, 2, 30, 50], [10, 10, 10.5, 20], [70, 0, 90, 10]], 40, 60)
    np.testing.assert_array_equal(clipped, [[0, 2, 30, 40]])  # thin and outside ones dropped
    np.testing.assert_array_equal(B.clip_boxes(np.zeros((0, 4)), 40, 60), [[0, 0, 60, 40]])


def test_geometry_and_the_decoders_inputs():
    """Break caught: padding read from a value (a tiny real box, here 1e-4 of a pixel on a side,
    would read as padding by its float16 area) instead of the counts."""
    features = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    boxes = np.array([[[0, 0, 50, 20], [10, 5, 10.0001, 5.0001], [0, 0, 0, 0]],
                      [[25, 10, 100, 40], [1, 1, 2, 2], [3, 3, 4, 4]]], np.float32)
    regions = box_regions(features, boxes, np.array([2, 1]), np.array([[100, 50], [100, 40]]))
    np.testing.assert_allclose(regions.geometry[0, 0], [0, 0, 0.5, 0.4, 0.2], rtol=1e-3)
    np.testing.assert_allclose(regions.geometry[1, 0], [0.25, 0.25, 1, 1, 0.5625], rtol=1e-3)
    np.testing.assert_array_equal(regions.features[0, :2], features[0, :2])
    assert regions.geometry[0, 1, 4] == 0  # the small box's area underflows float16...
    np.testing.assert_array_equal(regions.mask, [[True, True, False], [True, False, False]])
    for array in (regions.features, regions.geometry):  # ...past the counts: all zero
        assert not array[0, 2].any() and not array[1, 1:].any()
    np.testing.assert_allclose(geometry_boxes(regions.geometry[0, :1], 100, 50), boxes[0, :1],
                               atol=0.05)


def _detections(tmp_path, entries):
    path = tmp_path / "detections.json"
    path.write_text(json.dumps(entries))
    return path


def test_a_detections_file_in_cocos_results_format(tmp_path):
    path = _detections(tmp_path, [{"image_id": 7, "bbox": [1, 2, 10, 20], "score": 0.9},
                                  {"image_id": 7, "bbox": [5, 5, 3, 3], "score": 0.1},
                                  {"image_id": 9, "bbox": [0, 0, 4, 4], "score": 0.5}])
    found = B.read_detections(path, [7, 9, 11])
    np.testing.assert_array_equal(found[7][0], [[1, 2, 11, 22], [5, 5, 8, 8]])
    np.testing.assert_array_equal(found[7][1], np.float32([0.9, 0.1]))
    assert 11 not in found
    assert set(B.read_detections(path, [7], all_ids=[7, 9])) == {7}  # 9: another split's image
    with pytest.raises(UserError, match="entry 2 is for image id 9, which is not one of"):
        B.read_detections(path, [7], all_ids=[7, 11])


@pytest.mark.parametrize("entry,message", [
    ({"image_id": 8, "bbox": [1, 2, 3, 4], "score": 0.5}, "entry 0 is for image id 8, which is not"),
    ({"image_id": 7, "bbox": [1, 2, 3], "score": 0.5}, "entry 0 is not {image_id, bbox"),
    ({"image_id": 7, "bbox": [1, 2, 0, 4], "score": 0.5}, "entry 0 (image 7) has the box"),
    ({"image_id": 7, "bbox": [1, 2, 3, 4]}, "entry 0 is not {image_id"),
    ({"image_id": 7, "bbox": [1, 2, 3, 4], "score": "nan"}, "entry 0 (image 7) has the score nan: scores must"),
    ({"image_id": 7.0, "bbox": [1, 2, 3, 4], "score": 0.5}, None),  # a whole number as a float: fine
    ({"image_id": 7.7, "bbox": [1, 2, 3, 4], "score": 0.5}, "image_id 7.7 is not a whole number"),
    ({"image_id": "7", "bbox": [1, 2, 3, 4], "score": 0.5}, "image_id '7' is not a whole number"),
])
def test_a_bad_detection_is_one_line_naming_it(tmp_path, entry, message):
    """Breaks caught (besides the first round's): an image_id of 7.7 read as 7, a NaN score
    reported as a box without width."""
    if message is None:
        assert set(B.read_detections(_detections(tmp_path, [entry]), [7])) == {7}
        return
    with pytest.raises(UserError, match=message.replace("{", r"\{").replace("(", r"\(")
                       .replace(")", r"\)")):
        B.read_detections(_detections(tmp_path, [entry]), [7])


@pytest.mark.parametrize("boxes,fragment", [
    ([[200, 10, 300, 40]], "wholly outside the 128 x 64 image"),  # past the right edge
    ([[10, 5, 10 + 1e6, 40]], "past the edges of the 128 x 64 image"),  # x1 = 1e6
    ([[-20, 5, 50, 40]], "past the edges of"),
])
def test_boxes_outside_their_image_are_one_line_naming_them(boxes, fragment):
    """Breaks caught: a box wholly outside its image clipped into a whole-image box, an xyxy box
    given as xywh (or x1 = 1e6) clipped without a word."""
    with pytest.raises(UserError, match=fragment):
        B.check_inside(np.array(boxes, np.float32), 128, 64, "d.json, image 3")
    B.check_inside(np.array([[0, 0, 128, 64], [-2, -1, 130, 66]], np.float32), 128, 64, "ok")


def test_a_box_file_with_a_box_outside_its_image_is_one_line(tmp_path):
    """Break caught: a box file whose box reaches 1e6 in a 128-pixel image trained (and at 1e7
    overflowed float16 with the features blamed)."""
    arrays = _box_file(tmp_path, image_sizes=np.float32([[128, 64], [128, 64]]))
    check_boxes(arrays, "ok")
    arrays["boxes"][1, 0] = [10, 10, 1e6, 20]
    with pytest.raises(UserError, match=r"image row 1, box 0 is .* outside its 128 x 64 image"):
        check_boxes(arrays, "train2014_vgg16_boxes_pca.h5")


def test_an_annotation_file_naming_one_image_file_twice_is_one_line(tmp_path):
    """Break caught: two ids of one file name passed on, then refused with a false claim ("in the
    train and the train splits")."""
    from core.data.builder import read_annotations

    (tmp_path / "a.png").write_bytes(b"")
    ann = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "a.png"}],
           "annotations": [{"id": 1, "image_id": 1, "caption": "a cat"}]}
    (tmp_path / "c.json").write_text(json.dumps(ann))
    with pytest.raises(UserError, match="the file a.png is listed as two images .ids 1 and 2."):
        read_annotations(tmp_path / "c.json", tmp_path)


def test_detections_of_a_dataset_whose_splits_share_image_ids_are_refused(tmp_path):
    """Break caught: where train and val number their images each from 0 (the sample's annotation
    files), val images given the train images' boxes."""
    from core.data.box_files import check_unique_ids

    check_unique_ids({"train": np.array([1, 2]), "val": np.array([3])})
    with pytest.raises(UserError, match="image id 2 names images of the train and the val split"):
        check_unique_ids({"train": np.array([1, 2]), "val": np.array([2])})
    with pytest.raises(UserError, match="image id 2 names two images of the train split"):
        check_unique_ids({"train": np.array([1, 2, 2]), "val": np.array([3])})


def test_a_boxs_feature_depends_on_its_image_and_box_only(tmp_path):
    """The same box gives the same feature whatever other boxes or images share the batch, and a
    box moved with its object by a whole map cell (16 pixels at scale 1; far enough from the edges
    that conv5_3's 196-pixel view stays inside) gives the same feature. Breaks caught: the boxes'
    scale to the map (spatial_scale, the image's resize) wrong, rows of a batch mixed up."""
    a = _image((30, 30, 30), [(144, 136, 176, 184, (200, 60, 60))], size=(320, 320))
    b = _image((30, 30, 30), [(160, 136, 192, 184, (200, 60, 60))], size=(320, 320))  # +16 px
    paths = []
    for name, image in (("a.png", a), ("b.png", b)):
        Image.fromarray(image).save(tmp_path / name)
        paths.append(tmp_path / name)
    spec = parse_weights("random", 0)
    box_a, box_b = np.float32([[144, 136, 176, 184]]), np.float32([[160, 136, 192, 184]])
    together = B.extract_box_features(paths, [np.concatenate([box_a, [[0, 0, 320, 320]]]), box_b],
                                      spec, side=320, batch_size=2, progress=False)
    alone = B.extract_box_features(paths[:1], [box_a], spec, side=320, batch_size=1,
                                   progress=False)
    scale = float(np.abs(alone[0]).max())  # a batch of one and of two round alike to 0.1%
    np.testing.assert_allclose(together[0][:1], alone[0], rtol=5e-3, atol=1e-3 * scale)
    assert together[0].shape == (2, 512 * 9) and together[0].dtype == np.float16
    np.testing.assert_allclose(together[1].astype(np.float32), alone[0].astype(np.float32),
                               rtol=0.02, atol=0.02 * scale)
    assert not np.allclose(together[0][1], together[0][0])
    # the same scene at twice the size (a photo whose longer side is not --box_side): its box, in
    # its own pixels, pools the same place of the scaled map (break caught: the box not scaled to
    # the resized image, which pooled another area of every COCO photo and failed no test)
    Image.fromarray(a).resize((640, 640), Image.NEAREST).save(tmp_path / "big.png")
    big = B.extract_box_features([tmp_path / "big.png"], [box_a * 2], spec, side=320,
                                 progress=False)
    unscaled = B.extract_box_features([tmp_path / "big.png"], [box_a], spec, side=320,
                                      progress=False)

    def distance(f):  # relative to the feature at scale 1
        return float(np.linalg.norm(f[0].astype(np.float32) - alone[0].astype(np.float32))
                     / np.linalg.norm(alone[0].astype(np.float32)))

    # resampling aside, the same place (0.030 here); the box unscaled pools another (0.22)
    assert distance(big) < 0.06 and distance(unscaled) > 0.15


def _tsv(path, rows):
    """Write a bottom-up tsv in peteanderson80's format: rows of (image_id, w, h, boxes (k, 4),
    features (k, 2048)), or a raw list of fields."""
    lines = []
    for row in rows:
        if isinstance(row, list):
            lines.append("\t".join(row))
            continue
        image_id, w, h, boxes, features = row
        fields = [str(image_id), str(w), str(h), str(len(boxes)),
                  base64.b64encode(np.float32(boxes).tobytes()).decode(),
                  base64.b64encode(np.float32(features).tobytes()).decode()]
        lines.append("\t".join(fields))
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(rng, ids, counts):
    return [(i, 640, 480, np.tile([[10, 20, 110, 220]], (k, 1)) + 3 * np.arange(k)[:, None],
             rng.standard_normal((k, 2048))) for i, k in zip(ids, counts)]


def test_the_bottom_up_tsv_import_matches_images_by_id_and_pads(tmp_path, monkeypatch):
    """Without PCA (0) the features are written as they are: no identity projection of every box
    (2048 x 2048 multiply-adds each, ~1.8e13 at COCO size). Break caught: projecting anyway."""
    import core.data.features

    monkeypatch.setattr(core.data.features, "project", lambda *a: pytest.fail("projected"))
    rng = np.random.default_rng(0)
    rows = _rows(rng, [42, 7, 99, 5], [3, 1, 2, 36])  # 99: not an image of the dataset
    tsv = _tsv(tmp_path / "trainval.tsv", rows)
    kind = FEATURE_KINDS["boxes"]
    said = []
    transform = import_bottom_up([tsv], {"train": np.array([5, 7]), "val": np.array([42])},
                                 tmp_path, 0, lambda s: kind.path(tmp_path, s), progress=False,
                                 log=said.append)
    assert said == [f"skipped 1 bottom-up row(s) of images this dataset does not have, e.g. {tsv}, "
                    "line 3 (image 99)"]
    np.testing.assert_array_equal(transform["components"], np.eye(2048))
    with h5py.File(kind.path(tmp_path, "train")) as f:
        np.testing.assert_array_equal(f["counts"][()], [36, 1])
        assert f["features"].shape == (2, 36, 2048) and f["features"].dtype == np.float16
        np.testing.assert_array_equal(f["features"][1, 0], np.float16(rows[1][4][0]))
        assert not f["features"][1, 1:].any() and not f["boxes"][1, 1:].any()
        np.testing.assert_array_equal(f["boxes"][0], np.float32(rows[3][3]))
        np.testing.assert_array_equal(f["image_sizes"][()], [[640, 480], [640, 480]])
    with h5py.File(kind.path(tmp_path, "val")) as f:
        assert f["features"].shape == (1, 3, 2048) and f["counts"][0] == 3


@pytest.mark.parametrize("bad,message", [
    (lambda r: r[:4] + [r[4][:-8], r[5]], "boxes holds"),
    (lambda r: r[:3] + ["2"] + r[4:], "num_boxes 2 needs"),
    (lambda r: r[:5], "5 fields, not the 6"),
    (lambda r: r[:4] + ["!!!!"] + r[5:], "line 1 (image 7)"),
    (lambda r: ["x7"] + r[1:], "line 1: image_id 'x7' is not a COCO image id"),
])
def test_a_bad_tsv_row_is_one_line_naming_it(tmp_path, bad, message):
    rng = np.random.default_rng(1)
    _tsv(tmp_path / "good.tsv", _rows(rng, [7], [3]))
    fields = (tmp_path / "good.tsv").read_text().strip().split("\t")
    tsv = _tsv(tmp_path / "bad.tsv", [bad(fields)])
    kind = FEATURE_KINDS["boxes"]
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_bottom_up([tsv], {"train": np.array([7])}, tmp_path, 0,
                         lambda s: kind.path(tmp_path, s), progress=False)


def test_an_image_without_a_tsv_row_or_with_two_is_one_line(tmp_path):
    rng = np.random.default_rng(2)
    kind = FEATURE_KINDS["boxes"]
    tsv = _tsv(tmp_path / "a.tsv", _rows(rng, [7, 8, 7], [2, 2, 2]))
    with pytest.raises(UserError, match="image 7 again"):
        import_bottom_up([tsv], {"train": np.array([7, 8])}, tmp_path, 0,
                         lambda s: kind.path(tmp_path, s), progress=False)
    tsv = _tsv(tmp_path / "b.tsv", _rows(rng, [7], [2]))
    with pytest.raises(UserError, match="no bottom-up row for image 8 of the train split"):
        import_bottom_up([tsv], {"train": np.array([7, 8])}, tmp_path, 0,
                         lambda s: kind.path(tmp_path, s), progress=False)
    with pytest.raises(UserError, match="image id 7 is in the train and the val splits"):
        import_bottom_up([tsv], {"train": np.array([7]), "val": np.array([7])}, tmp_path, 0,
                         lambda s: kind.path(tmp_path, s), progress=False)


@pytest.mark.slow
def test_a_build_imports_the_bottom_up_features_and_trains_on_them(tmp_path, capsys):
    """features_extraction.py --bottom_up_tsv end to end, without PCA: the rows of the dataset's
    images (ids from the captions files), an updown trains on them and captions with --eval; a new
    image (--image) is one line: no detector here gives those boxes."""
    import inference
    import training

    rng = np.random.default_rng(3)
    splits = {"train": (sample.write_split(tmp_path, "train", 6), tmp_path / "images" / "train"),
              "val": (sample.write_split(tmp_path, "val", 2, start=100),
                      tmp_path / "images" / "val")}
    tsv = _tsv(tmp_path / "trainval.tsv", _rows(rng, [101, 0, 1, 2, 3, 4, 5, 100, 555],
                                                [2, 3, 36, 1, 5, 4, 2, 3, 7]))
    out = tmp_path / "data"
    features_extraction.main(
        ["--train_annotations", str(splits["train"][0]), "--train_images", str(splits["train"][1]),
         "--val_annotations", str(splits["val"][0]), "--val_images", str(splits["val"][1]),
         "--out_dir", str(out), "--weights", "random", "--pca_dim", "2", "--min_word_count", "1",
         "--bottom_up_tsv", str(tsv), "--box_pca_dim", "0", "--quiet"])
    data = load_coco_data(out, features="boxes")
    assert data["train_features"].shape == (6, 36, 2048)
    assert data["train_features"].geometry.shape == (6, 36, 5)
    np.testing.assert_array_equal(data["val_features"].mask.sum(axis=1), [3, 2])
    _, info = load_transform(out / FEATURE_KINDS["boxes"].transform_file)
    assert info["boxes"]["source"] == "bottom-up tsv"
    assert info["pca_dim"] == 2048  # the dimension the files hold, as other builds record it
    checkpoint = tmp_path / "updown.npz"
    training.main(["--model", "updown", "--features", "boxes", "--data_dir", str(out), "--epochs",
                   "1", "--hidden_dim", "8", "--wordvec_dim", "8", "--attention_dim", "4",
                   "--checkpoint", str(checkpoint), "--out_dir", str(tmp_path), "--quiet"])
    inference.main(["--model", "updown", "--checkpoint", str(checkpoint), "--data_dir", str(out),
                    "--eval", "--out_dir", str(tmp_path)])
    assert (tmp_path / "updown_val_greedy_eval.json").is_file()
    capsys.readouterr()
    one_line_error(capsys, lambda: inference.main(
        ["--model", "updown", "--checkpoint", str(checkpoint), "--data_dir", str(out), "--image",
         str(splits["val"][1] / "000100.png"), "--out_dir", str(tmp_path)]),
        "this dataset's boxes came from bottom-up tsv", "which has none for new images")


def _box_file(tmp_path, **changes):
    arrays = {"features": np.ones((2, 3, 4), np.float16),
              "boxes": np.tile(np.float32([1, 1, 5, 5]), (2, 3, 1)),
              "counts": np.array([3, 1], np.int32), "image_sizes": np.full((2, 2), 10, np.float32)}
    arrays.update(changes)
    return arrays


@pytest.mark.parametrize("changes,message", [
    ({"counts": np.array([0, 1], np.int32)}, "image row 0 has a count outside 1..K"),
    ({"counts": np.array([3, 4], np.int32)}, "image row 1 has a count outside 1..K"),
    ({"counts": np.array([3.0, 1.0])}, "counts must hold integers"),
    ({"image_sizes": np.zeros((2, 2), np.float32)}, "an image size that is not positive"),
    ({"boxes": np.tile(np.float32([5, 1, 5, 5]), (2, 3, 1))}, "image row 0, box 0 is"),
    ({"boxes": np.zeros((2, 3, 5), np.float32)}, "do not fit (Ni, K, D)"),
])
def test_a_damaged_boxes_file_is_one_line(tmp_path, changes, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_boxes(_box_file(tmp_path, **changes), "train2014_vgg16_boxes_pca.h5")
    check_boxes(_box_file(tmp_path, boxes=np.tile(np.float32([1, 1, 5, 5]), (2, 3, 1))), "ok")


@pytest.mark.parametrize("argv,fragment", [
    (["--boxes", "plain", "--bottom_up_tsv", "x.tsv"], "choose one"),
    (["--boxes", "plain", "--min_boxes", "20", "--max_boxes", "10"], "--min_boxes 20 must be"),
    (["--boxes", "detector", "--weights", "w.pt"], "--boxes detector takes"),
    (["--boxes", "plain", "--box_pca_dim", "0"], "--box_pca_dim 0 (no PCA) is for"),
    (["--boxes", "plain", "--box_threshold", "2"], "--box_threshold a score in [0, 1]"),
])
def test_bad_box_flags_are_one_line(capsys, tmp_path, argv, fragment):
    ann = tmp_path / "a.json"
    ann.write_text("{}")
    one_line_error(capsys, lambda: features_extraction.main(
        ["--train_annotations", str(ann), "--train_images", str(tmp_path), "--val_annotations",
         str(tmp_path / "b.json"), "--val_images", str(tmp_path), "--out_dir",
         str(tmp_path / "out")] + argv), fragment)


def _scenes(tmp_path, counts=(("train", 12), ("val", 4))):
    """Render sample scenes and their COCO captions files -> {split: (annotations, images)}."""
    return {split: (sample.write_split(tmp_path, split, n), tmp_path / "images" / split)
            for split, n in counts}


@pytest.fixture(scope="module")
def plain_built(tmp_path_factory):
    """A dataset of 12 + 4 sample scenes built with --boxes plain (and the grid)."""
    src = tmp_path_factory.mktemp("plain")
    splits = _scenes(src)
    out = src / "data"
    features_extraction.main(
        ["--train_annotations", str(splits["train"][0]), "--train_images", str(splits["train"][1]),
         "--val_annotations", str(splits["val"][0]), "--val_images", str(splits["val"][1]),
         "--out_dir", str(out), "--weights", "random", "--pca_dim", "8", "--min_word_count", "1",
         "--boxes", "plain", "--box_pca_dim", "6", "--box_side", "64", "--quiet"])
    return src, out


@pytest.mark.slow
def test_a_build_with_plain_boxes_writes_the_boxes_layout(plain_built):
    """features_extraction.py --boxes plain end to end: per split the proposer's boxes, a count per
    image, padded features; the transform says where the boxes came from; loading them gives the
    decoders' inputs."""
    _, out = plain_built
    kind = FEATURE_KINDS["boxes"]
    with h5py.File(kind.path(out, "train")) as f:
        scenes = [sample.make_scene("train", i) for i in range(12)]
        np.testing.assert_array_equal(f["counts"][()], [len(s["objects"]) for s in scenes])
        assert f["features"].shape == (12, 2, 6) and f["features"].dtype == np.float16
        first = B.plain_background_boxes(np.asarray(sample.render(scenes[0])))
        np.testing.assert_array_equal(f["boxes"][0, :len(first)], first)
        np.testing.assert_array_equal(f["image_sizes"][0], [sample.SIZE, sample.SIZE])
    _, info = load_transform(out / kind.transform_file)
    assert info["boxes"]["source"] == "plain" and info["side"] == 64
    data = load_coco_data(out, features="boxes")
    regions = data["train_features"]
    assert regions.shape == (12, 2, 6) and regions.geometry.shape == (12, 2, 5)
    assert data["features_kind"] == "boxes"
    single = [i for i, s in enumerate(scenes) if len(s["objects"]) == 1]
    assert not regions.mask[single, 1].any() and regions.mask[:, 0].all()
    assert not regions.features[single, 1].any() and not regions.geometry[single, 1].any()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["updown", "region_transformer"])  # a numpy and a torch decoder
def test_box_decoders_train_caption_new_images_and_draw_their_boxes(plain_built, model, tmp_path,
                                                                    capsys, monkeypatch):
    """Each region decoder with --features boxes: trains, captions a new image through the
    dataset's proposer and box transform (--image), and draws its attention over the image's own
    boxes (the figure's boxes are the proposer's)."""
    import inference
    import training
    from core.evaluation import captions as captions_module

    src, out = plain_built
    checkpoint = tmp_path / checkpoint_name(model, "b")
    training.main(["--model", model, "--features", "boxes", "--data_dir", str(out), "--epochs", "2",
                   "--batch_size", "20", "--checkpoint", str(checkpoint), "--out_dir",
                   str(tmp_path), "--wordvec_dim", "8", "--hidden_dim", "8", "--attention_dim", "4",
                   "--dim_feedforward", "16", "--num_heads", "2", "--num_layers", "1", "--recipe",
                   "default", "--quiet"])
    assert "up to 2 boxes of 6-d features" in capsys.readouterr().out
    drawn = []
    real = captions_module.save_attention_figure
    monkeypatch.setattr(captions_module, "save_attention_figure",
                        lambda rows, *a, **k: (drawn.extend(rows), real(rows, *a, **k)))
    image = src / "images" / "val" / "000002.png"
    inference.main(["--model", model, "--checkpoint", str(checkpoint), "--image", str(image),
                    "--attention", "--out_dir", str(tmp_path), "--device", "cpu"])
    assert "RoIAlign 3 x 3 regions" in capsys.readouterr().out
    assert (tmp_path / f"{checkpoint.stem}_images_attention.png").stat().st_size > 5000
    proposed = B.plain_background_boxes(np.asarray(Image.open(image).convert("RGB")))
    assert not drawn[0]["heat_map"]
    np.testing.assert_allclose(drawn[0]["boxes"], proposed, atol=0.1)
    assert drawn[0]["alpha"].shape[1] == len(proposed)  # a weight for each of the image's boxes
    page = (tmp_path / f"{checkpoint.stem}_images_attention.html").read_text()  # the same on the page
    shown = json.loads(re.search(r'id="attention">(.*?)</script>', page).group(1))["0"]
    np.testing.assert_allclose(shown["alpha"], drawn[0]["alpha"], atol=1e-4)
    np.testing.assert_allclose(np.array(shown["boxes"]) * 128, drawn[0]["boxes"], atol=1e-3)


@pytest.mark.slow
def test_a_build_from_a_detections_file_keeps_the_adaptive_count(tmp_path, capsys):
    shared = _scenes(tmp_path / "shared", (("train", 4), ("val", 2)))
    splits = {"train": (sample.write_split(tmp_path, "train", 4), tmp_path / "images" / "train"),
              "val": (sample.write_split(tmp_path, "val", 2, start=100),
                      tmp_path / "images" / "val")}
    entries = [{"image_id": i, "bbox": [k, k, 20, 20], "score": s}
               for i in (0, 1, 2, 3, 100, 101) for k, s in enumerate((0.9, 0.5, 0.1, 0.05))]
    entries += [{"image_id": 1, "bbox": [2, 2, 30, 30], "score": 0.3}]
    detections = _detections(tmp_path, entries)
    out = tmp_path / "data"

    def build(splits):
        return features_extraction.main(
            ["--train_annotations", str(splits["train"][0]), "--train_images",
             str(splits["train"][1]), "--val_annotations", str(splits["val"][0]), "--val_images",
             str(splits["val"][1]), "--out_dir", str(out), "--weights", "random", "--pca_dim", "2",
             "--min_word_count", "1", "--boxes", str(detections), "--box_threshold", "0.4",
             "--min_boxes", "3", "--max_boxes", "10", "--box_pca_dim", "4", "--box_side", "64",
             "--quiet"])

    # the sample's splits number their images from 0 alike: val's images 0-1 would get train's
    one_line_error(capsys, lambda: build(shared), "image id 0 names images of the train and the val")
    build(splits)
    # --skip_bad_images drops a missing image whose detections the file still lists (break
    # caught: refused as "not one of the dataset's images"); a detection of no image is refused
    (splits["val"][1] / "000101.png").unlink()
    build_skipping = ["--skip_bad_images", "--out_dir", str(tmp_path / "skipped")]
    features_extraction.main(
        ["--train_annotations", str(splits["train"][0]), "--train_images", str(splits["train"][1]),
         "--val_annotations", str(splits["val"][0]), "--val_images", str(splits["val"][1]),
         "--weights", "random", "--pca_dim", "2", "--min_word_count", "1", "--boxes",
         str(detections), "--min_boxes", "3", "--box_pca_dim", "4", "--box_side", "64", "--quiet",
         *build_skipping])
    with h5py.File(FEATURE_KINDS["boxes"].path(tmp_path / "skipped", "val")) as f:
        assert f["counts"].shape == (1,)
    kind = FEATURE_KINDS["boxes"]
    with h5py.File(kind.path(out, "train")) as f:
        np.testing.assert_array_equal(f["counts"][()], [3, 3, 3, 3])  # 2 above 0.4, at least 3
        np.testing.assert_array_equal(f["boxes"][0], [[0, 0, 20, 20], [1, 1, 21, 21],
                                                      [2, 2, 22, 22]])  # the best three
        np.testing.assert_array_equal(f["boxes"][1], [[0, 0, 20, 20], [1, 1, 21, 21],
                                                      [2, 2, 32, 32]])  # 0.3 beats 0.1
    with h5py.File(kind.path(out, "val")) as f:
        np.testing.assert_array_equal(f["counts"][()], [3, 3])


@pytest.mark.slow
def test_the_detector_proposes_class_agnostic_boxes_within_the_count(tmp_path):
    """torchvision's Faster R-CNN with seeded random weights (offline): it runs, its boxes are
    clipped to the image and their number is the adaptive count's (at most max_boxes; fewer only
    when it proposes fewer, and the whole image when none)."""
    path = tmp_path / "scene.png"
    sample.render(sample.make_scene("train", 0)).save(path)
    source = BoxSource("detector", threshold=0.2, min_boxes=2, max_boxes=5)
    (found,), sizes, bad = source.boxes([path], [0], parse_weights("random", 0))
    assert not bad and sizes.tolist() == [[sample.SIZE, sample.SIZE]]
    assert 1 <= len(found) <= 5 and found.shape[1] == 4
    assert (found[:, :2] >= 0).all() and (found[:, 2:] <= sample.SIZE).all()
    assert (found[:, 2] > found[:, 0]).all() and (found[:, 3] > found[:, 1]).all()
    # a 400 x 3 image: too thin for the detector's scaling; the whole image is its box (break
    # caught: "Input and output sizes should be greater than 0" after the whole fc7 pass)
    Image.fromarray(np.full((3, 400, 3), 90, np.uint8)).save(tmp_path / "thin.png")
    (thin,), _, bad = source.boxes([tmp_path / "thin.png"], [0], parse_weights("random", 0))
    assert not bad and thin.tolist() == [[0, 0, 400, 3]]


def test_a_random_detector_is_said(tmp_path, capsys, monkeypatch):
    """Break caught: --boxes detector --weights random kept 56-83 meaningless boxes an image
    without a word that the detector itself is random."""
    import core.data.builder

    monkeypatch.setattr(core.data.builder, "build_dataset", lambda *a, **k: None)
    ann = tmp_path / "a.json"
    ann.write_text("{}")
    flags = ["--train_annotations", str(ann), "--train_images", str(tmp_path), "--val_annotations",
             str(tmp_path / "b.json"), "--val_images", str(tmp_path), "--out_dir", str(tmp_path / "o")]
    features_extraction.main(flags + ["--boxes", "detector", "--weights", "random"])
    assert "the detector's weights are random too, so its boxes mean nothing" in capsys.readouterr().out
    features_extraction.main(flags + ["--boxes", "plain", "--weights", "random"])
    assert "detector" not in capsys.readouterr().out


def test_region_files_larger_than_memory_are_read_per_minibatch_to_the_same_run(tmp_path,
                                                                                monkeypatch):
    """A run whose region files are read per minibatch from disk (RegionFile: what a file larger
    than LAZY_SHARE of the memory gets) trains bitwise as the run that loads them whole, and a
    NaN in the file is one line naming its row when that row is read. Break caught: rows given in
    the sorted order h5py reads them in rather than the batch's."""
    import training
    from core.data import coco_utils
    from core.datasets.make_fake_coco import write_fake_coco
    from core.model.checkpoint import load_checkpoint

    data_dir = write_fake_coco(tmp_path / "data", train_images=24, val_images=8, vocab_size=12,
                               pca_dim=6, boxes=(12, 5))
    lazy = coco_utils.load_coco_data(data_dir, features="boxes", lazy=True)
    whole = coco_utils.load_coco_data(data_dir, features="boxes", lazy=False)
    assert isinstance(lazy["train_features"], coco_utils.RegionFile)
    rows = np.array([[5, 2], [5, 0], [23, 2]])
    np.testing.assert_array_equal(lazy["train_features"][rows], whole["train_features"][rows])
    weights = {}
    for share in (0.25, 0.0):  # 0: every region file is read per minibatch
        monkeypatch.setattr(coco_utils, "LAZY_SHARE", share)
        checkpoint = tmp_path / f"updown_{share}.npz"
        training.main(["--model", "updown", "--features", "boxes", "--data_dir", str(data_dir),
                       "--epochs", "2", "--batch_size", "16", "--hidden_dim", "8",
                       "--wordvec_dim", "8", "--attention_dim", "4", "--checkpoint",
                       str(checkpoint), "--out_dir", str(tmp_path / str(share)), "--quiet"])
        weights[share] = load_checkpoint(checkpoint)[0].params
    for k in weights[0.0]:
        np.testing.assert_array_equal(weights[0.0][k], weights[0.25][k], err_msg=k)
    broken_dir = shutil.copytree(data_dir, tmp_path / "broken")  # the runs' files are still open
    with h5py.File(broken_dir / "train2014_vgg16_boxes_pca.h5", "r+") as f:
        f["features"][7, 0, 0] = np.nan
    broken = coco_utils.load_coco_data(broken_dir, features="boxes", lazy=True)
    broken["train_features"][[1, 2]]
    with pytest.raises(UserError, match="feature row 7 holds NaN"):
        broken["train_features"][[1, 7]]


def test_a_folder_without_boxes_names_the_flags_that_build_them(fake_coco, tmp_path):
    """Break caught: the hint naming a flag that does not exist (it said --import_tsv)."""
    import features_extraction

    folder = tmp_path / "no_boxes"
    shutil.copytree(fake_coco, folder)
    for path in folder.glob("*_boxes_*"):
        path.unlink()
    with pytest.raises(UserError) as raised:
        load_coco_data(folder, features="boxes")
    flags = re.findall(r"--\w+", str(raised.value))
    assert "--bottom_up_tsv" in flags and "--boxes" in flags
    known = {a.option_strings[0] for a in features_extraction.build_parser()._actions
             if a.option_strings}
    assert set(flags) <= known, set(flags) - known


def test_a_region_file_read_per_minibatch_closes_its_file_and_takes_slices(fake_coco):
    """Breaks caught: the HDF5 file kept open for the run (it was never closed), slicing
    (regions[a:b]) failing, rows read per minibatch differing from the file loaded whole."""
    whole = load_coco_data(fake_coco, features="boxes", lazy=False)["train_features"]
    lazy = load_coco_data(fake_coco, features="boxes", lazy=True)["train_features"]
    assert type(lazy).__name__ == "RegionFile"
    for rows in (slice(2, 7), np.array([5, 1, 5]), 3):
        for got, expected in zip(lazy[rows].arrays(), whole[rows].arrays()):
            np.testing.assert_array_equal(got, expected)
    assert not h5py.h5f.get_obj_ids(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE)  # nothing left open


def test_a_region_file_cut_short_or_changed_during_the_run_is_one_line(fake_coco, tmp_path):
    """HDF5 reads the missing bytes of a file cut short as zeros. Breaks caught: a cut-short box
    file trained on all-zero features (loaded whole or per minibatch), a file copied over while a
    run reads it per minibatch read without a word."""
    folder = tmp_path / "data"
    shutil.copytree(fake_coco, folder)
    path = FEATURE_KINDS["boxes"].path(folder, "train")
    regions = load_coco_data(folder, features="boxes", lazy=True)["train_features"]
    regions[np.arange(3)]
    with open(path, "r+b") as f:  # copied over in place: another size
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(UserError, match="changed while the run was reading it"):
        regions[np.arange(3)]
    for lazy in (True, False):
        with pytest.raises(UserError, match="is cut short"):
            load_coco_data(folder, features="boxes", lazy=lazy)


@pytest.mark.parametrize("source, extra, fragment", [
    ("detections", ["--box_pca_dim", "40"], "--box_pca_dim 40 needs at least 40 train boxes"),
    ("bad detections", [], "entry 1 is not {image_id, bbox"),
    ("detections", ["--box_pca_dim", "5000"], "--box_pca_dim 5000 is larger than a box's 4608"),
    ("tsv", ["--box_pca_dim", "3000"], "--box_pca_dim 3000 is larger than a box's 2048"),
    ("bad tsv", [], "5 fields, not the 6"),
    ("short tsv", [], "no bottom-up row for image 2 of the train split"),
    ("tsv", ["--box_pca_dim", "9"], "--box_pca_dim 9 needs at least 9 train boxes"),
])
def test_every_box_input_is_checked_before_the_first_image(tmp_path, monkeypatch, capsys, source, extra,
                                                           fragment):
    """Break caught: a detections file, a bottom-up tsv and --box_pca_dim against the boxes there
    will be checked only after the fc7 pass over every split (hours at COCO size)."""
    import core.data.features

    monkeypatch.setattr(core.data.features, "extract_fc7", lambda *a, **k: pytest.fail("extracted"))
    splits = {"train": (sample.write_split(tmp_path, "train", 3), tmp_path / "images" / "train"),
              "val": (sample.write_split(tmp_path, "val", 1, start=100), tmp_path / "images" / "val")}
    entries = [{"image_id": i, "bbox": [1, 1, 20, 20], "score": 0.9} for i in (0, 1, 2, 100)]
    if source == "bad detections":
        entries[1] = {"image_id": 1, "bbox": [1, 1, 20]}
    if "tsv" in source:
        rows = _rows(np.random.default_rng(0), [0, 1, 2, 100], [2, 2, 2, 2])
        if source == "bad tsv":
            rows[0] = [str(f) for f in (0, 128, 128, 2, "x")]
        if source == "short tsv":
            del rows[2]
        flags = ["--bottom_up_tsv", str(_tsv(tmp_path / "b.tsv", rows))]
    else:
        flags = ["--boxes", str(_detections(tmp_path, entries)), "--min_boxes", "1"]
    one_line_error(capsys, lambda: features_extraction.main(
        ["--train_annotations", str(splits["train"][0]), "--train_images", str(splits["train"][1]),
         "--val_annotations", str(splits["val"][0]), "--val_images", str(splits["val"][1]),
         "--out_dir", str(tmp_path / "out"), "--weights", "random", "--pca_dim", "2",
         "--min_word_count", "1", "--quiet", *flags, *extra]), fragment)


@pytest.mark.parametrize("error", [RuntimeError("Can't write data (file write failed: errno = 28, error "
                                                "message = 'No space left on device')"),
                                   OSError(28, "No space left on device")])
def test_a_full_disk_during_the_tsv_import_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch, error):
    """h5py's writes made to fail as on a full disk. Break caught: 44 HDF5 RuntimeError tracebacks,
    then a segfault, and a .build_* folder left behind."""
    import h5py._hl.dataset

    splits = {"train": (sample.write_split(tmp_path, "train", 3), tmp_path / "images" / "train"),
              "val": (sample.write_split(tmp_path, "val", 1, start=100), tmp_path / "images" / "val")}
    tsv = _tsv(tmp_path / "b.tsv", _rows(np.random.default_rng(0), [0, 1, 2, 100], [2, 2, 2, 2]))

    def full(self, *args):
        raise error

    monkeypatch.setattr(h5py._hl.dataset.Dataset, "__setitem__", full)
    out = tmp_path / "out"
    one_line_error(capsys, lambda: features_extraction.main(
        ["--train_annotations", str(splits["train"][0]), "--train_images", str(splits["train"][1]),
         "--val_annotations", str(splits["val"][0]), "--val_images", str(splits["val"][1]),
         "--out_dir", str(out), "--weights", "random", "--pca_dim", "2", "--min_word_count", "1", "--quiet",
         "--bottom_up_tsv", str(tsv), "--box_pca_dim", "0"]),
                   "No space left on device" if isinstance(error, OSError) else "is the disk full?")
    assert list(out.iterdir()) == []  # no .build_* folder, no file of the layout


def test_the_tsv_import_reuses_the_scan_made_before_the_first_image(tmp_path, monkeypatch):
    """The build scans the tsv files before its first image (every row checked, the PCA fitted);
    the import then writes in one more pass, or scans again when the build dropped images since.
    Break caught: a third pass over files of many GB."""
    from core.data import bottom_up

    tsv = _tsv(tmp_path / "b.tsv", _rows(np.random.default_rng(0), [5, 7, 9], [2, 3, 1]))
    ids = {"train": np.array([5, 7]), "val": np.array([9])}
    kind = FEATURE_KINDS["boxes"]
    passes = []
    read_rows = bottom_up.read_rows
    monkeypatch.setattr(bottom_up, "read_rows", lambda paths: (passes.append(1), read_rows(paths))[1])
    scan = bottom_up.scan_bottom_up([tsv], ids, 2, progress=False)
    import_bottom_up([tsv], ids, tmp_path, 2, lambda s: kind.path(tmp_path, s), progress=False, scan=scan)
    assert len(passes) == 2
    fewer = {"train": np.array([7]), "val": np.array([9])}  # an image dropped since the scan
    import_bottom_up([tsv], fewer, tmp_path, 0, lambda s: kind.path(tmp_path, s), progress=False, scan=scan)
    assert len(passes) == 4
    with h5py.File(kind.path(tmp_path, "train")) as f:
        assert f["counts"][()].tolist() == [3]


def test_a_detections_file_is_parsed_once_and_again_when_it_changes(tmp_path, monkeypatch):
    """A build checks the file before its first image and reads its boxes later: one parse. Breaks
    caught: a second parse of a file of many MB, a changed file's old entries kept."""
    parses = []
    loads = json.loads
    monkeypatch.setattr(B.json, "loads", lambda text: (parses.append(1), loads(text))[1])
    path = _detections(tmp_path, [{"image_id": 7, "bbox": [1, 2, 10, 20], "score": 0.9}])
    assert set(B.read_detections(path, [7, 9], all_ids=[7, 9])) == {7}
    assert set(B.read_detections(path, [9], all_ids=[7, 9])) == set()  # another rank's share
    assert len(parses) == 1
    path.write_text(json.dumps([{"image_id": 9, "bbox": [1, 2, 10, 20], "score": 0.9},
                                {"image_id": 9, "bbox": [3, 2, 10, 20], "score": 0.5}]))
    assert len(B.read_detections(path, [9], all_ids=[7, 9])[9][0]) == 2 and len(parses) == 2


def test_a_gzipped_tsv_is_read_as_the_plain_one(tmp_path):
    """Break caught: a gzip-compressed bottom-up tsv refused as "'ascii' codec can't decode byte
    0x8b"."""
    import gzip

    plain = _tsv(tmp_path / "b.tsv", _rows(np.random.default_rng(0), [5, 7], [2, 3]))
    packed = tmp_path / "b.tsv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    kind = FEATURE_KINDS["boxes"]
    for source, folder in ((plain, tmp_path / "p"), (packed, tmp_path / "z")):
        folder.mkdir()
        import_bottom_up([source], {"train": np.array([5]), "val": np.array([7])}, folder, 0,
                         lambda s, folder=folder: kind.path(folder, s), progress=False)
    for split in ("train", "val"):
        with h5py.File(kind.path(tmp_path / "p", split)) as a, h5py.File(kind.path(tmp_path / "z", split)) as b:
            np.testing.assert_array_equal(a["features"][()], b["features"][()])
