"""Build the bundled sample dataset: rendered scenes of coloured shapes with grammar-made captions.

Usage (from the repository root):
    python -m core.datasets.make_sample_dataset     # rebuild core/datasets/sample_captioning
    python -m core.datasets.make_sample_dataset --out_dir DIR --train_images 50 --val_images 20 \
        --test_images 0

Each image shows one object in the middle or two objects side by side or one above the other
(6 colours, 4 shapes, 2 sizes), and has five captions: the five phrasings of a small grammar,
so that the references of an image depend on what it shows and not on a random choice of
words. The images and COCO-format caption files are written first, then the dataset builder
that features_extraction.py runs (core/data/builder.py) turns them into the CS231n layout
with a seeded RANDOM VGG16
(--weights random): ImageNet weights cannot be downloaded everywhere. Random convolutional
features keep colour, size and a coarse map of where things are, but blur the shape of small
objects in arbitrary places; so objects are large and stand in fixed slots (a few pixels of
jitter), which keeps every attribute recoverable from the features
(benchmarks/probe_sample_features.py).
"""
import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.util.cli import user_errors
from core.data.builder import build_dataset
from core.data.features import parse_weights

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_captioning"
SIZE = 96
BACKGROUND = (235, 235, 235)
COLORS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (40, 70, 220),
          "yellow": (240, 210, 20), "purple": (140, 50, 170), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle", "diamond")
RADII = {"small": 13, "large": 21}
JITTER = 3  # pixels, each coordinate
SLOTS = {"left": ((24, 48), (72, 48)), "above": ((48, 24), (48, 72))}  # first, second object centre
INVERSE = {"left": "right", "above": "below"}
PHRASE = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
ITS = {"left": "to its right", "above": "below it"}
SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}

ONE_OBJECT = (
    "a {d}",
    "there is a {d}",
    "a picture of a {d}",
    "a single {d}",
    "the image shows a {d}",
)
TWO_OBJECTS = (  # A stands left of / above B
    "a {A} {rel} a {B}",
    "a {B} {inv} a {A}",
    "there is a {A} {rel} a {B}",
    "the {B} is {inv} the {A}",
    "a {A} and a {B} {its}",
)


def make_scene(split, index, seed=0):
    """The deterministic content of image `index` of a split -> dict with "objects" (one or two:
    colour, shape, size, centre) and "relation" (None, "left" or "above": how the first object
    stands to the second)."""
    rng = np.random.default_rng([seed, SPLIT_SEEDS[split], index])

    def obj():
        return {"color": str(rng.choice(list(COLORS))), "shape": str(rng.choice(SHAPES)),
                "size": str(rng.choice(list(RADII)))}

    def place(centre):
        return [int(c + j) for c, j in zip(centre, rng.integers(-JITTER, JITTER + 1, size=2))]

    if rng.random() < 0.35:
        a = obj()
        a["center"] = place((SIZE // 2, SIZE // 2))
        return {"objects": [a], "relation": None}
    a, b = obj(), obj()
    while (b["color"], b["shape"], b["size"]) == (a["color"], a["shape"], a["size"]):
        b = obj()
    relation = str(rng.choice(list(SLOTS)))
    a["center"], b["center"] = (place(c) for c in SLOTS[relation])
    return {"objects": [a, b], "relation": relation}


def shifted(scene, pixels=10):
    """The scene with every object moved by `pixels`: down for objects side by side, right for
    objects one above the other and for a single object (the way that keeps them inside the image)
    -> new scene."""
    dx, dy = (0, pixels) if scene["relation"] == "left" else (pixels, 0)
    return dict(scene, objects=[dict(o, center=[o["center"][0] + dx, o["center"][1] + dy])
                                for o in scene["objects"]])


def render(scene, background=BACKGROUND):
    """scene -> PIL RGB image (SIZE x SIZE) on the background colour (RGB)."""
    image = Image.new("RGB", (SIZE, SIZE), tuple(background))
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


def captions(scene):
    """The five phrasings of the scene (always all five, in a fixed order) -> list of 5 str."""

    def describe(o):
        return f"{o['size']} {o['color']} {o['shape']}"

    if scene["relation"] is None:
        return [t.format(d=describe(scene["objects"][0])) for t in ONE_OBJECT]
    a, b = scene["objects"]
    rel = scene["relation"]
    fields = dict(A=describe(a), B=describe(b), rel=PHRASE[rel], inv=PHRASE[INVERSE[rel]],
                  its=ITS[rel])
    return [t.format(**fields) for t in TWO_OBJECTS]


def attention_on_objects(scene, words, alphas, boxes):
    """Whether the attention of each object word looks at the object it names.

    scene: make_scene's dict; words: the generated words (L,); alphas (L, R) the attention each word
    was chosen with; boxes (R, 4) the regions' pixel boxes (core.data.features.region_boxes) -> list
    of (hit: the word's most attended region overlaps the object's bounding box, chance: the share
    of regions that overlap it) for every colour or shape word that names exactly one object of the
    scene.
    """
    out = []
    for word, alpha in zip(words, alphas):
        attribute = "color" if word in COLORS else "shape" if word in SHAPES else None
        named = [o for o in scene["objects"] if attribute and o[attribute] == word]
        if len(named) != 1:
            continue  # not an object word, a wrong one, or one that fits both objects
        (x, y), r = named[0]["center"], RADII[named[0]["size"]]
        on = ((boxes[:, 0] < x + r) & (boxes[:, 2] > x - r)
              & (boxes[:, 1] < y + r) & (boxes[:, 3] > y - r))
        out.append((bool(on[int(np.argmax(alpha))]), float(on.mean())))
    return out


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
    parser.add_argument("--batch_size", type=int, default=32, help="images per VGG16 forward pass")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    counts = {"train": args.train_images, "val": args.val_images, "test": args.test_images}
    counts = {split: n for split, n in counts.items() if n or split != "test"}
    ann = {split: write_split(out_dir, split, n, args.seed) for split, n in counts.items()}
    with user_errors("make_sample_dataset"):
        build_dataset({split: (ann[split], out_dir / "images" / split) for split in counts},
                      out_dir,
                      parse_weights("random", args.seed), batch_size=args.batch_size, device="cpu",
                      min_word_count=1, pca_dim=args.pca_dim,
                      grid_size=7, grid_pca_dim=args.grid_pca_dim)


if __name__ == "__main__":
    main()
