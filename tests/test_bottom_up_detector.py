"""The bottom-up detector trained here (core/data/bottom_up_detector.py, core/datasets/
train_detector.py, core/datasets/scene_variations.py): it trains and its loss falls, its weights
round-trip without pickle, a box's feature is its image's and its own, the targets line up with
the scenes, the kept boxes, AP; end to end (slow): a dataset built with it captions new images
through --image with the same detector."""
import numpy as np
import pytest
import torch

from core.data import bottom_up_detector as D
from core.datasets import make_sample_dataset as sample
from core.datasets import scene_variations as V
from core.datasets import train_detector as T
from core.util.errors import UserError
from tests.helpers import checkpoint_name


def tiny(seed=0):
    torch.manual_seed(seed)
    return D.BottomUpDetector(D.DetectorConfig(
        classes=tuple(sample.SHAPES), attributes={"color": list(sample.COLORS),
                                                  "size": list(sample.RADII)},
        channels=(8, 8, 16, 16)))


def test_the_detector_trains_on_a_tiny_set_its_loss_falls_and_a_run_repeats():
    """Breaks caught: no optimizer step; the attribute losses left out; scenes drawn unseeded
    (two runs differ)."""
    scenes = [sample.make_scene("train", i) for i in range(16)]
    runs = [T.train(tiny(), scenes, epochs=1, batch_size=8, lr=3e-3, log=lambda *a: None)]
    model = tiny()
    runs.append(T.train(model, scenes, epochs=4, batch_size=8, lr=3e-3, log=lambda *a: None))
    assert runs[0][0] == runs[1][0]  # the same first epoch: seeded weights and drawings
    assert runs[1][-1] < 0.75 * runs[1][0]
    images, targets = T.training_batch(scenes, [0, 1], 0, 0)
    model.train()
    assert set(model.losses(images, targets)) == {
        "loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_color",
        "loss_size"}


def test_the_weights_round_trip_without_pickle(tmp_path):
    """Breaks caught: a weight left out; the config not restored; a foreign file loaded."""
    model = tiny()
    path = tmp_path / "d.npz"
    D.save_detector(model, path, {"epochs": 3})
    with np.load(path, allow_pickle=False) as f:
        assert all(f[k].dtype != object for k in f.files)
    loaded, extra = D.load_detector(path)
    assert extra == {"epochs": 3} and loaded.config == model.config and not loaded.training
    state = loaded.state_dict()
    assert state.keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(state[name], value.half().float()), name
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(UserError, match="cannot read the detector weights"):
        D.load_detector(tmp_path / "other.npz")
    np.savez(tmp_path / "foreign.npz", config=np.array('{"format": "x"}'), extra=np.array("{}"))
    with pytest.raises(UserError, match="is not a bottom-up detector's weights file"):
        D.load_detector(tmp_path / "foreign.npz")


def test_a_box_feature_depends_only_on_its_image_and_box():
    """The box head's representation of a box whatever else is in the batch or the image's
    boxes, and detect's features are those of its boxes. Breaks caught: boxes scaled by another
    image's size; features of the batch's first image for all."""
    model = tiny().eval()
    a = D.to_tensor(sample.render(sample.make_scene("val", 0)))
    b = D.to_tensor(sample.render(sample.make_scene("val", 1)))
    one, two = torch.tensor([[10., 12, 50, 60]]), torch.tensor([[60., 20, 100, 90]])
    with torch.inference_mode():
        alone = model.features_of([a], [one])
        together = model.features_of([b, a], [two, torch.cat([two, one])])
        assert torch.allclose(together[-1], alone[0], atol=1e-5)
        assert not torch.allclose(together[0], together[-1], atol=1e-3)
        found = model.detect([a])[0]
        again = model.features_of([a], [found["boxes"]])
    assert found["features"].shape == (len(found["boxes"]), D.REPRESENTATION)
    assert torch.allclose(found["features"], again, atol=1e-5)


def test_the_targets_line_up_with_the_objects_and_their_boxes_with_the_pixels():
    """Breaks caught: labels from 0 (the background's); colour and size swapped; a triangle's box
    that cuts its base."""
    for i in range(60):
        scene = sample.make_scene("train", i)
        boxes, labels, attributes = V.scene_targets(scene)
        for o, box, label, (colour, size) in zip(scene["objects"], boxes, labels, attributes):
            assert sample.SHAPES[label - 1] == o["shape"]
            assert (list(sample.COLORS)[colour], list(sample.RADII)[size]) == (o["color"],
                                                                            o["size"])
            drawn = np.asarray(sample.render(dict(scene, objects=[o])))
            ys, xs = np.nonzero((drawn != np.array(scene["background"], np.uint8)).any(axis=2))
            assert box[0] <= xs.min() <= box[0] + 1 and box[2] - 2 <= xs.max() < box[2]
            assert box[1] <= ys.min() <= box[1] + 1 and box[3] - 2 <= ys.max() < box[3]
    assert np.array_equal(V.scene_targets(scene, 2.0)[0], boxes * 2)


def test_the_kept_boxes_are_the_surest_after_suppression():
    """Breaks caught: suppression left out (the overlapping twin kept); min_boxes ignored."""
    found = {"boxes": torch.tensor([[0., 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30],
                                    [40, 40, 50, 50]]),
             "scores": torch.tensor([0.9, 0.8, 0.6, 0.3]), "labels": torch.tensor([1, 2, 3, 4]),
             "features": torch.arange(8.).reshape(4, 2)}
    kept = D.keep(found)
    assert kept["labels"].tolist() == [1, 3] and kept["features"].tolist() == [[0, 1], [4, 5]]
    assert D.keep(found, threshold=0.95, min_boxes=1)["labels"].tolist() == [1]
    assert D.keep(found, threshold=0.0, max_boxes=2)["labels"].tolist() == [1, 3]


def test_average_precision_is_cocoevals():
    """Perfect detections score 1, the wrong class 0, a box half off 0 (IoU < 0.5)."""
    scenes = [sample.make_scene("test", i) for i in range(5)]

    def found(shift=0.0, wrong=False):
        out = []
        for scene in scenes:
            boxes, labels, _ = V.scene_targets(scene)
            labels = labels % 4 + 1 if wrong else labels
            out.append({"boxes": torch.from_numpy(boxes + shift), "labels": torch.from_numpy(labels),
                        "scores": torch.ones(len(labels))})
        return out

    assert T.average_precision(scenes, found()) == pytest.approx(1.0)
    assert T.average_precision(scenes, found(wrong=True)) == pytest.approx(0.0)
    assert T.average_precision(scenes, found(shift=20.0)) == pytest.approx(0.0)


def test_varied_scenes_keep_the_objects_and_vary_the_rest():
    """Every background kind differs from flat but for "flat"; the objects stay where they are,
    in a shade of their colour. Break caught: the shade ignored by render."""
    rng = np.random.default_rng(0)
    for kind in V.BACKGROUND_KINDS:
        background = V.varied_background(rng, kind)
        assert background.shape == (sample.SIZE, sample.SIZE, 3)
        assert (background == background[0, 0]).all() == (kind == "flat"), kind
    scene = sample.make_scene("train", 5)
    shaded = V.shaded(scene, np.random.default_rng(1))
    drawn = np.asarray(sample.render(shaded, np.zeros((sample.SIZE, sample.SIZE, 3), np.uint8)))
    for o in shaded["objects"]:
        x, y = o["center"]
        assert drawn[y, x].tolist() == o["rgb"] != list(sample.COLORS[o["color"]])
        assert np.abs(np.subtract(o["rgb"], sample.COLORS[o["color"]])).max() <= V.OBJECT_SHADE


@pytest.mark.slow
def test_a_dataset_built_with_the_detector_captions_new_images_with_it(tmp_path, capsys):
    """The command trains and scores a detector; features_extraction.py --boxes detector
    --detector builds a dataset with its boxes and box-head features and a copy of it; a box
    decoder trained there captions a new image through --image with the same detector, its regions
    the dataset's own for that image; a changed copy is refused in one line."""
    import features_extraction
    import inference
    import training
    from core.data.coco_utils import load_coco_data
    from core.evaluation import captions as captioning
    from tests.helpers import one_line_error

    weights = tmp_path / "d.npz"
    T.main(["--train_images", "24", "--test_images", "6", "--epochs", "2", "--out", str(weights),
            "--threads", "2"])
    printed = capsys.readouterr().out
    assert "test varied: AP@0.5" in printed and "objects found" in printed
    _, extra = D.load_detector(weights)
    assert set(extra["scores"]) == {"test", "test varied"} and len(extra["losses"]) == 2
    src = tmp_path / "src"
    for split, n in (("train", 30), ("val", 8)):
        sample.write_split(src, split, n)
    out = tmp_path / "out"
    features_extraction.main([
        "--train_annotations", str(src / "annotations" / "captions_train.json"),
        "--train_images", str(src / "images" / "train"),
        "--val_annotations", str(src / "annotations" / "captions_val.json"),
        "--val_images", str(src / "images" / "val"), "--out_dir", str(out), "--weights", "random",
        "--pca_dim", "8", "--boxes", "detector", "--detector", str(weights), "--box_threshold",
        "0", "--max_boxes", "3", "--box_pca_dim", "8", "--quiet"])
    assert (out / "bottom_up_detector.npz").read_bytes() == weights.read_bytes()
    data = load_coco_data(out, features="boxes")
    checkpoint = tmp_path / checkpoint_name("updown", "b")
    training.main(["--model", "updown", "--features", "boxes", "--data_dir", str(out), "--epochs",
                   "1", "--batch_size", "20", "--checkpoint", str(checkpoint), "--out_dir",
                   str(tmp_path), "--wordvec_dim", "8", "--hidden_dim", "8", "--attention_dim",
                   "4", "--recipe", "default", "--quiet"])
    from core.data.feature_kinds import FEATURE_KINDS
    from core.model.checkpoint import load_checkpoint

    recorded = load_checkpoint(checkpoint)[1]["extra"]  # its regions, to refuse others
    assert recorded["regions_id"] == FEATURE_KINDS["boxes"].regions_identity(out)["regions_id"]
    assert recorded["regions_source"] == "learned"
    seen = []
    real = captioning.sample
    captioning.sample = lambda model, features, settings: (seen.append(features),
                                                           real(model, features, settings))[1]
    try:
        image = src / "images" / "val" / "000001.png"
        inference.main(["--model", "updown", "--checkpoint", str(checkpoint), "--image",
                        str(image), "--out_dir", str(tmp_path), "--device", "cpu"])
    finally:
        captioning.sample = real
    [regions] = seen
    own = data["val_features"][1]
    count = int(own.mask.sum())
    assert int(regions.mask[0].sum()) == count == 3
    np.testing.assert_allclose(regions.features[0, :count], own.features[:count], atol=2e-2)
    np.testing.assert_allclose(regions.geometry[0, :count], own.geometry[:count], atol=1e-5)
    (out / "bottom_up_detector.npz").write_bytes(weights.read_bytes() + b"x")
    capsys.readouterr()
    one_line_error(capsys, lambda: inference.main(
        ["--model", "updown", "--checkpoint", str(checkpoint), "--image", str(image),
         "--out_dir", str(tmp_path), "--device", "cpu"]), "is not the detector", "SHA-256")
