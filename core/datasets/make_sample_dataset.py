"""Build the bundled sample dataset: rendered scenes of coloured shapes with grammar-made captions.

Usage (from the repository root):
    python -m core.datasets.make_sample_dataset     # rebuild core/datasets/sample_captioning
    python -m core.datasets.make_sample_dataset --out_dir DIR --train_images 50 --val_images 20 \
        --test_images 0

Each image shows one object or two, one to the left of or above the other (6 colours, 4 shapes,
2 sizes), anywhere in the image, on a background whose colour changes from image to image (a dark
or light grey, tinted); each has five captions: the five phrasings of a small grammar, so that the
references of an image depend on what it shows and not on a random choice of words. The images
and COCO-format caption files are written first, then the dataset builder that
features_extraction.py runs (core/data/builder.py) turns them into the CS231n layout with a seeded
RANDOM VGG16 (--weights random: ImageNet weights cannot be downloaded everywhere): fc7 and the 7 x
7 grid; and object regions from the bottom-up detector trained on the scenes first
(core/datasets/train_detector.py, which writes bottom_up_detector.npz into the dataset; --detector
FILE reuses one): its boxes and each box's feature from its box head (--boxes plain: the parts
that differ from the plain background, each box's feature pooled from VGG16's conv5_3, as before
the detector). Random convolutional features keep colour, size and a coarse map of where things
are; the shape of an object in an arbitrary place is kept by a box's feature, hardly by a grid
cell's (benchmarks/probe_sample_features.py).
"""
import argparse
import json
from pathlib import Path

from core.util.cli import user_errors
from core.data.box_sources import BoxSource
from core.data.boxes import DETECTION_THRESHOLD, LEARNED_MAX_BOXES
from core.data.builder import build_dataset
from core.data.encoders import parse_weights
from core.datasets.scenes import (  # noqa: F401  (the scenes, importable here as before)
    SIZE, BACKGROUND, BACKGROUND_LEVELS, TINT, HELD_OUT_BACKGROUNDS, COLORS, SHAPES, RADII,
    MARGIN, GAP, INVERSE, PHRASE, ITS, SPLIT_SEEDS, ONE_OBJECT, TWO_OBJECTS, _place, make_scene,
    shifted, moved, render, gradient_background, captions, attention_on_objects)

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_captioning"
BOX_SIDE = 224  # the boxes' feature map: the 128-pixel scenes scaled 1.75 times (conv5_3 14 x 14)


def write_split(out_dir, split, num_images, seed=0, start=0):
    """Render images start..start+num_images-1 and write their COCO-format caption file -> its
    path."""
    image_dir = out_dir / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(start, start + num_images):
        scene = make_scene(split, i, seed)
        name = f"{i:06d}.png"
        render(scene).save(image_dir / name, optimize=True)
        images.append({"id": i, "file_name": name, "width": SIZE, "height": SIZE})
        annotations += [{"id": 5 * i + j + 1, "image_id": i, "caption": c} for j,
                        c in enumerate(captions(scene))]
    path = out_dir / "annotations" / f"captions_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations},
                               separators=(",", ":")))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default=str(SAMPLE_DIR), help="where to write the dataset")
    parser.add_argument("--train_images", type=int, default=2000, help="number of training images")
    parser.add_argument("--val_images", type=int, default=500,
                        help="number of validation images (chooses the best checkpoint)")
    parser.add_argument("--test_images", type=int, default=500,
                        help="number of test images (scored by inference.py --eval only; 0: no "
                             "test split)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the scenes and of the random VGG16")
    parser.add_argument("--pca_dim", type=int, default=512,
                        help="PCA dimensions (512 in the CS231n layout)")
    parser.add_argument("--grid_pca_dim", type=int, default=64,
                        help="PCA dimensions of the 7 x 7 pool5 region features (the attention "
                             "decoders')")
    parser.add_argument("--box_pca_dim", type=int, default=128,
                        help="PCA dimensions of the object regions' features (the box decoders')")
    parser.add_argument("--box_side", type=int, default=BOX_SIDE,
                        help="the longer side the scenes are scaled to for the boxes' feature map")
    parser.add_argument("--batch_size", type=int, default=32, help="images per VGG16 forward pass")
    parser.add_argument("--detector", default=None,
                        help="the bottom-up detector whose boxes and box-head features are the "
                             "object regions (default: train one first, python -m "
                             "core.datasets.train_detector, into the dataset's folder)")
    parser.add_argument("--boxes", default="detector", choices=("detector", "plain"),
                        help="the object regions' source: the trained detector, or the plain-"
                             "background proposer with VGG16 features (the dataset before it)")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    counts = {"train": args.train_images, "val": args.val_images, "test": args.test_images}
    counts = {split: n for split, n in counts.items() if n or split != "test"}
    ann = {split: write_split(out_dir, split, n, args.seed) for split, n in counts.items()}
    with user_errors("make_sample_dataset"):
        boxes = BoxSource("plain")
        if args.boxes == "detector":
            detector = args.detector or str(out_dir / "bottom_up_detector.npz")
            if args.detector is None:  # trained on the train scenes, scored on the test scenes
                from core.datasets import train_detector

                train_detector.main(["--out", detector, "--seed", str(args.seed),
                                     "--train_images", str(args.train_images), "--test_images",
                                     str(args.test_images or args.val_images)])
            boxes = BoxSource.parse("detector", detector, threshold=DETECTION_THRESHOLD,
                                    min_boxes=1, max_boxes=LEARNED_MAX_BOXES)
        build_dataset({split: (ann[split], out_dir / "images" / split) for split in counts},
                      out_dir,
                      parse_weights("random", args.seed), batch_size=args.batch_size, device="cpu",
                      min_word_count=1, pca_dim=args.pca_dim,
                      grid_size=7, grid_pca_dim=args.grid_pca_dim, boxes=boxes,
                      box_pca_dim=args.box_pca_dim, box_side=args.box_side)


if __name__ == "__main__":
    main()
