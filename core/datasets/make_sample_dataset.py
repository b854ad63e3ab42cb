"""Build the bundled sample dataset: rendered scenes of coloured shapes with grammar-made captions.

Usage (from the repository root):
    python -m core.datasets.make_sample_dataset                # rebuild core/datasets/sample_captioning
    python -m core.datasets.make_sample_dataset --out_dir DIR --train_images 50 --val_images 20

Each image shows one or two objects (6 colours, 4 shapes, 2 sizes; two objects stand left of,
right of, above or below each other) and has five captions drawn from a small grammar with
different word orders and phrasings. The images and COCO-format caption files are written
first, then features_extraction.py turns them into the CS231n layout with a seeded RANDOM
VGG16 (--weights random): ImageNet weights cannot be downloaded everywhere, and random
convolutional features still separate colour, shape, size and position.
"""
import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import features_extraction

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_captioning"
SIZE = 96
BACKGROUND = (235, 235, 235)
COLORS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (40, 70, 220), "yellow": (240, 210, 20),
          "purple": (140, 50, 170), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle", "diamond")
RADII = {"small": 9, "large": 16}
RELATIONS = ("left", "right", "above", "below")
INVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}
PHRASE = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
SHORT = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
ITS = {"left": "to its right", "right": "to its left", "above": "below it", "below": "above it"}
SPLIT_SEEDS = {"train": 1, "val": 2}

ONE_OBJECT = (
    "a {d}",
    "there is a {d}",
    "a picture of a {d}",
    "one {d} on a gray background",
    "a {color} {shape} that is {size}",
    "the image shows a {d}",
    "a single {d}",
)
TWO_OBJECTS = (
    "a {A} {rel} a {B}",
    "a {B} {inv} a {A}",
    "there is a {A} {rel} a {B}",
    "a {A} and a {B} {its}",
    "a picture of a {A} {short} a {B}",
    "the {B} is {inv} the {A}",
    "a {A} is {rel} a {B}",
)


def make_scene(split, index, seed=0):
    """The deterministic content of image `index` of a split -> dict with objects and relation."""
    rng = np.random.default_rng([seed, SPLIT_SEEDS[split], index])

    def obj():
        return {"color": str(rng.choice(list(COLORS))), "shape": str(rng.choice(SHAPES)),
                "size": str(rng.choice(list(RADII)))}

    if rng.random() < 0.35:
        a = obj()
        a["center"] = [int(x) for x in rng.integers(30, SIZE - 30, size=2)]
        return {"objects": [a], "relation": None, "caption_seed": int(rng.integers(1 << 31))}
    a, b = obj(), obj()
    while (b["color"], b["shape"], b["size"]) == (a["color"], a["shape"], a["size"]):
        b = obj()
    relation = str(rng.choice(RELATIONS))
    along = rng.integers(26, 36), rng.integers(SIZE - 36, SIZE - 26)  # first/second coordinate on the axis
    across = rng.integers(30, SIZE - 30, size=2)
    first, second = (along[0], along[1]) if relation in ("left", "above") else (along[1], along[0])
    if relation in ("left", "right"):
        a["center"], b["center"] = [int(first), int(across[0])], [int(second), int(across[1])]
    else:
        a["center"], b["center"] = [int(across[0]), int(first)], [int(across[1]), int(second)]
    return {"objects": [a, b], "relation": relation, "caption_seed": int(rng.integers(1 << 31))}


def render(scene):
    """scene -> PIL RGB image (SIZE x SIZE)."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for o in scene["objects"]:
        (x, y), r, fill = o["center"], RADII[o["size"]], COLORS[o["color"]]
        if o["shape"] == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif o["shape"] == "square":
            s = int(r * 0.85)
            draw.rectangle([x - s, y - s, x + s, y + s], fill=fill)
        elif o["shape"] == "triangle":
            draw.polygon([(x, y - r), (x - r, y + r * 0.8), (x + r, y + r * 0.8)], fill=fill)
        else:
            draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
    return image


def captions(scene, count=5):
    """Five different phrasings of the scene, chosen with the scene's own seed."""
    rng = np.random.default_rng(scene["caption_seed"])

    def describe(o):
        return f"{o['size']} {o['color']} {o['shape']}"

    if scene["relation"] is None:
        o = scene["objects"][0]
        fields = dict(d=describe(o), **{k: o[k] for k in ("color", "shape", "size")})
        templates = ONE_OBJECT
    else:
        a, b = scene["objects"]
        rel = scene["relation"]
        fields = dict(A=describe(a), B=describe(b), rel=PHRASE[rel], inv=PHRASE[INVERSE[rel]], short=SHORT[rel],
                      its=ITS[rel])
        templates = TWO_OBJECTS
    chosen = rng.choice(len(templates), size=count, replace=False)
    return [templates[i].format(**fields) for i in chosen]


def write_split(out_dir, split, num_images, seed=0, start=0):
    """Render images start..start+num_images-1 and write their COCO-format caption file -> its path."""
    image_dir = out_dir / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(start, start + num_images):
        scene = make_scene(split, i, seed)
        name = f"{i:06d}.png"
        render(scene).save(image_dir / name, optimize=True)
        images.append({"id": i, "file_name": name, "width": SIZE, "height": SIZE})
        annotations += [{"id": 5 * i + j + 1, "image_id": i, "caption": c} for j, c in enumerate(captions(scene))]
    path = out_dir / "annotations" / f"captions_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations}, separators=(",", ":")))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default=str(SAMPLE_DIR), help="where to write the dataset")
    parser.add_argument("--train_images", type=int, default=2000, help="number of training images")
    parser.add_argument("--val_images", type=int, default=500, help="number of validation images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenes and of the random VGG16")
    parser.add_argument("--pca_dim", type=int, default=512, help="PCA dimensions (512 in the CS231n layout)")
    parser.add_argument("--batch_size", type=int, default=32, help="images per VGG16 forward pass")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    counts = {"train": args.train_images, "val": args.val_images}
    ann = {split: write_split(out_dir, split, n, args.seed) for split, n in counts.items()}
    features_extraction.main([
        "--train_annotations", str(ann["train"]), "--train_images", str(out_dir / "images" / "train"),
        "--val_annotations", str(ann["val"]), "--val_images", str(out_dir / "images" / "val"),
        "--out_dir", str(out_dir), "--weights", "random", "--seed", str(args.seed), "--min_word_count", "1",
        "--pca_dim", str(args.pca_dim), "--batch_size", str(args.batch_size), "--device", "cpu",
    ])


if __name__ == "__main__":
    main()
