"""Train the bottom-up detector (core/data/bottom_up_detector.py) on the sample scenes' own boxes,
shapes, colours and sizes, and report how well it finds them.

Usage (from the repository root):
    python -m core.datasets.train_detector      # -> core/datasets/sample_captioning/bottom_up_detector.npz
    python -m core.datasets.train_detector --train_images 200 --epochs 1 --out /tmp/d.npz

Every epoch draws the training scenes anew as photographs vary (core/datasets/scene_variations.py:
backgrounds of four kinds, shades of the colours, some blur and JPEG), seeded by the epoch and the
image, so a run is repeatable. Adam, a learning rate divided by 10 for the last epoch. At the end
the test scenes are scored as the dataset draws them and drawn as photographs vary: the objects'
AP at IoU 0.5 (pycocotools' COCOeval, its iouThrs set to 0.5), the share of objects a kept box
finds (IoU >= 0.5; kept: the boxes the dataset's regions are made of, DETECTION_THRESHOLD), and the
colour and size accuracy of the kept box that finds each object. The weights (a few MB, no pickle)
record how they were trained and these scores.
"""
import argparse
import contextlib
import io
import time
from pathlib import Path

import numpy as np

from core.data.coco_utils import SAMPLE_DIR
from core.datasets import scenes as sample
from core.datasets import scene_variations as variations
from core.util.cli import choose_threads, limit_threads, user_errors

DEFAULT_OUT = SAMPLE_DIR / "bottom_up_detector.npz"


def detector_config():
    """The sample scenes' detector: their shapes as objects, colours and sizes as attributes."""
    from core.data.bottom_up_detector import DetectorConfig

    return DetectorConfig(classes=tuple(sample.SHAPES),
                          attributes={"color": list(sample.COLORS), "size": list(sample.RADII)})


def training_batch(scenes, indices, epoch, seed):
    """The scenes of `indices` drawn as photographs vary (seeded by seed, epoch and image) ->
    (images, targets) as BottomUpDetector.losses takes them."""
    import torch

    from core.data.bottom_up_detector import to_tensor

    images, targets = [], []
    for i in indices:
        rng = np.random.default_rng([seed, epoch, int(i)])
        images.append(to_tensor(variations.render_varied(scenes[i], rng)))
        boxes, labels, attributes = variations.scene_targets(scenes[i])
        targets.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                        "attributes": torch.from_numpy(attributes)})
    return images, targets


def train(model, scenes, epochs, batch_size=8, lr=1e-3, seed=0, log=print):
    """Train in place on the scenes -> the mean loss of each epoch (list)."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    means = []
    model.train()
    for epoch in range(epochs):
        if epoch == epochs - 1 and epochs > 1:
            for group in optimizer.param_groups:
                group["lr"] = lr / 10
        order = np.random.default_rng([seed, epoch]).permutation(len(scenes))
        total, start = 0.0, time.perf_counter()
        for s in range(0, len(order), batch_size):
            images, targets = training_batch(scenes, order[s:s + batch_size], epoch, seed)
            loss = sum(model.losses(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(images)
        means.append(total / len(scenes))
        log(f"epoch {epoch + 1}/{epochs}: loss {means[-1]:.4f} "
            f"({time.perf_counter() - start:.0f}s)")
    model.eval()
    return means


def score(model, scenes, images, batch_size=32):
    """The detector on drawn scenes -> {"ap50", "recall", "color", "size", "objects"}: AP at IoU
    0.5 over every detection, and over the kept boxes (core.data.bottom_up_detector.keep) the
    share of objects found at IoU >= 0.5 and the attribute accuracy of the box that finds each."""
    import torch
    from torchvision.ops import box_iou

    from core.data.bottom_up_detector import keep, to_tensor

    found = []
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            found += model.detect([to_tensor(im) for im in images[s:s + batch_size]])
    hits, colours, sizes = [], [], []
    for scene, f in zip(scenes, found):
        boxes, _, attributes = variations.scene_targets(scene, images[0].size[0] / sample.SIZE)
        kept = keep(f)
        iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(kept["boxes"])).numpy()
        for k in range(len(boxes)):
            j = int(iou[k].argmax()) if iou.shape[1] else -1
            hit = j >= 0 and iou[k, j] >= 0.5
            hits.append(hit)
            if hit:
                colours.append(kept["color"][j] == attributes[k, 0])
                sizes.append(kept["size"][j] == attributes[k, 1])
    return {"ap50": average_precision(scenes, found, images[0].size[0] / sample.SIZE),
            "recall": float(np.mean(hits)), "color": float(np.mean(colours or [0])),
            "size": float(np.mean(sizes or [0])), "objects": len(hits)}


def average_precision(scenes, found, scale=1.0):
    """AP at IoU 0.5 of detections (detect's dicts) against the scenes' objects, averaged over the
    classes, by pycocotools' COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for i, (scene, f) in enumerate(zip(scenes, found)):
        images.append({"id": i, "width": sample.SIZE * scale, "height": sample.SIZE * scale})
        for box, label in zip(*variations.scene_targets(scene, scale)[:2]):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": i, "iscrowd": 0,
                                "category_id": int(label), "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "area": (x1 - x0) * (y1 - y0)})
        for box, s, label in zip(f["boxes"].tolist(), f["scores"].tolist(),
                                 f["labels"].tolist()):
            results.append({"image_id": i, "category_id": int(label), "score": float(s),
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations, "categories": [
            {"id": k + 1, "name": n} for k, n in enumerate(sample.SHAPES)]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results) if results else COCO(), "bbox")
        evaluation.params.iouThrs = np.array([0.5])
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0])


def test_scenes(num_images, varied):
    """The first test scenes, drawn as the dataset draws them or as photographs vary -> (scenes,
    PIL images)."""
    scenes = [sample.make_scene("test", i) for i in range(num_images)]
    if not varied:
        return scenes, [sample.render(s) for s in scenes]
    return scenes, [variations.render_varied(s, np.random.default_rng([99, i]))
                    for i, s in enumerate(scenes)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="where to write the weights (.npz)")
    p.add_argument("--train_images", type=int, default=2000, help="training scenes")
    p.add_argument("--test_images", type=int, default=500, help="test scenes scored at the end")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0, help="of the weights and the drawn scenes")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: the cores idle at the start)")
    args = p.parse_args(argv)
    with user_errors("train_detector"):
        import torch

        from core.data.bottom_up_detector import BottomUpDetector, load_detector, save_detector

        limit_threads(choose_threads(args.threads, print))
        torch.manual_seed(args.seed)
        model = BottomUpDetector(detector_config())  # fresh weights, seeded above
        scenes = [sample.make_scene("train", i) for i in range(args.train_images)]
        start = time.perf_counter()
        losses = train(model, scenes, args.epochs, args.batch_size, args.lr, args.seed)
        seconds = time.perf_counter() - start
        save_detector(model, args.out, {"train_images": args.train_images, "epochs": args.epochs,
                                        "seed": args.seed, "losses": losses,
                                        "train_seconds": seconds})
        model, extra = load_detector(args.out)  # scored as saved (float16 weights)
        scores = {}
        for name, varied in (("test", False), ("test varied", True)):
            scores[name] = score(model, *test_scenes(args.test_images, varied))
            s = scores[name]
            print(f"{name}: AP@0.5 {s['ap50']:.3f}, objects found {s['recall']:.1%} of "
                  f"{s['objects']}, colour {s['color']:.1%}, size {s['size']:.1%}")
        save_detector(model, args.out, {**extra, "scores": scores})
        print(f"saved {args.out} ({Path(args.out).stat().st_size / 2 ** 20:.1f} MiB, trained in "
              f"{seconds / 60:.1f} min)")


if __name__ == "__main__":
    main()
