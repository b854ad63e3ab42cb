"""Region features end to end: built by features_extraction.py --grid, loaded, read by the attention
decoders in training and inference (--image, --attention), and the sample scenes' attention metric."""
import numpy as np
import pytest

import features_extraction
import inference
import training
from core.model.registry import MODEL_TYPES
from core.data.coco_utils import load_coco_data
from core.datasets import make_sample_dataset as sample
from core.util.errors import UserError
from core.data.features import GRID_TRANSFORM_FILE, extract_fc7, load_transform, project_grid, region_boxes
from tests.helpers import checkpoint_name, one_line_error
from tests.test_splits import COMMON, _split_flags

REGIONS = [m for m, t in MODEL_TYPES.items() if t.feature_kind.regions]  # the decoders over regions


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    src = tmp_path_factory.mktemp("grid")
    for split, n in (("train", 8), ("val", 3)):
        sample.write_split(src, split, n)
    out = src / "dataset"
    features_extraction.main(_split_flags(src, "train", "val") + ["--out_dir", str(out), "--grid",
                                                                  "--grid_pca_dim", "6"] + COMMON)
    return src, out


@pytest.mark.slow
def test_the_grid_is_pool5_projected_by_a_pca_of_train_regions(built):
    src, out = built
    data = load_coco_data(out, features="grid")
    assert data["train_features"].shape == (8, 49, 6) and data["train_features"].dtype == np.float16
    assert data["val_features"].shape == (3, 49, 6)
    transform, info = load_transform(out / GRID_TRANSFORM_FILE)
    assert (info["grid_size"], info["layer"], transform["components"].shape) == (7, "pool5", (6, 512))
    assert info["dataset_id"] == data["dataset_id"] == load_coco_data(out)["dataset_id"]
    _, _, grid = extract_fc7([src / "images" / "val" / "000001.png"], info["vgg16"], grid_size=7, progress=False)
    np.testing.assert_allclose(project_grid(grid, transform)[0].astype(np.float32),
                               data["val_features"].features[1].astype(np.float32), rtol=1e-2, atol=1e-2)
    # centred by the train regions' mean: the train regions' projections average to zero
    assert np.abs(data["train_features"].features.astype(np.float32).mean(axis=(0, 1))).max() < 1e-2


def test_a_folder_without_region_features_says_how_to_build_them(fake_coco, tmp_path):
    folder = tmp_path / "no_grid"
    folder.mkdir()
    for f in fake_coco.iterdir():
        if "_grid_" not in f.name:
            (folder / f.name).write_bytes(f.read_bytes())
    with pytest.raises(UserError, match="has no region features for the attention decoders: build them from the "
                                        "COCO images with `features_extraction.py --grid`"):
        load_coco_data(folder, features="grid")


def test_the_attention_flag_is_for_decoders_over_regions(capsys):
    one_line_error(capsys, lambda: inference.parse_args(["--model", "lstm", "--attention"]),
                   f"--attention needs a decoder that attends over image regions ({', '.join(REGIONS)})")
    one_line_error(capsys, lambda: inference.parse_args(["--model", "attention_lstm", "--attention",
                                                         "--eval"]), "drop --eval")


@pytest.mark.slow
@pytest.mark.parametrize("model", REGIONS)
def test_attention_decoders_train_caption_own_images_and_draw_their_attention(built, model, tmp_path, capsys):
    src, out = built
    checkpoint = tmp_path / checkpoint_name(model, "a")
    training.main(["--model", model, "--data_dir", str(out), "--epochs", "2", "--batch_size", "20", "--checkpoint",
                   str(checkpoint), "--out_dir", str(tmp_path), "--wordvec_dim", "8", "--hidden_dim", "8",
                   "--attention_dim", "4", "--dim_feedforward", "16", "--num_heads", "2", "--num_layers", "1",
                   "--recipe", "default", "--quiet"])
    assert "49 regions of 6-d features" in capsys.readouterr().out
    image = src / "images" / "val" / "000002.png"
    inference.main(["--model", model, "--checkpoint", str(checkpoint), "--image", str(image), "--attention",
                    "--out_dir", str(tmp_path), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "pool5 regions" in printed and (tmp_path / f"{checkpoint.stem}_images_attention.png").stat().st_size > 5000
    inference.main(["--model", model, "--checkpoint", str(checkpoint), "--split", "val", "--num_images", "2",
                    "--attention", "--out_dir", str(tmp_path), "--device", "cpu"])
    assert (tmp_path / f"{checkpoint.stem}_val_attention.png").stat().st_size > 5000


def test_a_gradient_background_runs_from_dark_to_light_under_the_objects():
    """Break caught: the scene's own flat colour drawn instead of the picture given."""
    backdrop = sample.gradient_background()
    assert backdrop.shape == (sample.SIZE, sample.SIZE, 3) and (backdrop[:, :, 0] == backdrop[:, :, 2]).all()
    assert (np.diff(backdrop[0, :, 0].astype(int)) >= 0).all() and backdrop[0, 0, 0] == 40
    assert backdrop[0, -1, 0] == 220 and (backdrop == backdrop[:1]).all()
    scene = sample.make_scene("test", 3)
    drawn = np.asarray(sample.render(scene, backdrop))
    flat = np.asarray(sample.render(scene))
    objects = (flat != np.array(scene["background"], np.uint8)).any(axis=2)
    assert objects.any() and (drawn[objects] == flat[objects]).all()
    assert (drawn[~objects] == backdrop[~objects]).all()


def test_shifted_scenes_move_every_object_and_keep_it_inside():
    for i in range(200):
        scene = sample.make_scene("val", i)
        moved = sample.shifted(scene)
        assert sample.captions(moved) == sample.captions(scene)
        for before, after in zip(scene["objects"], moved["objects"]):
            assert np.hypot(*np.subtract(after["center"], before["center"])) == 10
            r = sample.RADII[after["size"]]
            assert all(sample.MARGIN + r <= c <= sample.SIZE - sample.MARGIN - r for c in after["center"])


def test_attention_on_objects_counts_the_peak_on_the_named_object():
    scene = {"relation": "left", "objects": [
        {"color": "red", "shape": "circle", "size": "large", "center": [32, 64]},
        {"color": "blue", "shape": "circle", "size": "small", "center": [96, 64]}]}
    boxes = region_boxes(7, sample.SIZE, sample.SIZE)
    left, right = np.zeros(49), np.zeros(49)
    left[3 * 7 + 1] = 1  # row 3, column 1: x 24-40 px, on the left object (cells of 16 px from 8)
    right[3 * 7 + 5] = 1  # column 5: x 88-104 px, on the right one
    words = "a large red circle to the left of a small blue circle".split()
    alphas = [right if w == "red" else left if w == "blue" else left for w in words]
    result = sample.attention_on_objects(scene, words, alphas, boxes)
    assert [hit for hit, _ in result] == [False, False]  # red looked right, blue looked left; "circle" fits both
    alphas = [left if w == "red" else right for w in words]
    result = sample.attention_on_objects(scene, words, alphas, boxes)
    assert [hit for hit, _ in result] == [True, True]
    # chance: the share of regions overlapping each object's bounding box
    assert [round(c * 49) for _, c in result] == [9, 9]  # x 14-50 and 84-108: 3 x 3 cells each


def test_attention_on_objects_by_box_overlap():
    """Object boxes count by intersection over union with the named object's bounding box: the box
    of the object itself (IoU 1), not a box that only touches it (IoU below 0.5)."""
    scene = {"relation": "left", "objects": [
        {"color": "red", "shape": "circle", "size": "large", "center": [32, 64]},
        {"color": "blue", "shape": "square", "size": "small", "center": [96, 64]}]}
    boxes = np.array([[14, 46, 50, 82], [84, 52, 108, 76], [40, 46, 76, 82]])  # red, blue, beside red
    words = "a large red circle to the left of a small blue square".split()
    on_red, on_blue, beside = np.eye(3)
    alphas = [on_red if w in ("red", "circle") else on_blue if w in ("blue", "square") else beside
              for w in words]
    assert sample.attention_on_objects(scene, words, alphas, boxes, iou=0.5) == [(True, 1 / 3)] * 4
    alphas = [beside] * len(words)  # overlaps red (IoU 10 / 62 of the width), not blue
    result = sample.attention_on_objects(scene, words, alphas, boxes, iou=0.5)
    assert [hit for hit, _ in result] == [False] * 4
    assert [hit for hit, _ in sample.attention_on_objects(scene, words, alphas, boxes)] == [True, True, False, False]
