"""The sample scenes: what a scene holds (one or two coloured shapes anywhere, and how they stand),
how it is drawn, and its five captions. Used by the sample dataset's build
(core/datasets/make_sample_dataset.py), the detector's training (core/datasets/train_detector.py)
and the benchmarks.
"""
import numpy as np
from PIL import Image, ImageDraw

SIZE = 128
BACKGROUND = (235, 235, 235)  # the background of scenes that name none
# training backgrounds: a dark or a light grey (levels drawn from these ranges), tinted by up to
# TINT per channel; HELD_OUT_BACKGROUNDS lie outside them (benchmarks/sample_robustness.py)
BACKGROUND_LEVELS = ((40, 100), (150, 230))
TINT = 12
HELD_OUT_BACKGROUNDS = {"white": (255, 255, 255), "black": (10, 10, 10),
                        "mid grey": (125, 125, 125), "blue grey": (120, 130, 150)}
COLORS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (40, 70, 220),
          "yellow": (240, 210, 20), "purple": (140, 50, 170), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle", "diamond")
RADII = {"small": 12, "large": 18}
MARGIN = 9  # pixels between an object and the image's edge (the centre crop of fc7 cuts 8)
GAP = 6  # the least space between two objects along their relation's axis
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


def _place(objects, relation, rng):
    """Centre each object (dicts with size) anywhere MARGIN inside the image, so that the first
    stands `relation` ("left", "above" or None) to the second: farther apart along that axis than
    across it, with GAP pixels or more between them (sets "center" in place)."""
    while True:
        for o in objects:
            r = RADII[o["size"]]
            o["center"] = [int(c) for c in rng.integers(MARGIN + r, SIZE - MARGIN - r + 1, size=2)]
        if relation is None:
            return
        a, b = objects
        axis = 0 if relation == "left" else 1
        along = b["center"][axis] - a["center"][axis]
        if (along >= RADII[a["size"]] + RADII[b["size"]] + GAP
                and abs(b["center"][1 - axis] - a["center"][1 - axis]) < along):
            return


def make_scene(split, index, seed=0):
    """The deterministic content of image `index` of a split -> dict with "objects" (one or two:
    colour, shape, size, centre anywhere in the image: see _place), "relation" (None, "left" or
    "above": how the first object stands to the second) and "background" (RGB, a training
    background: a dark or light grey, tinted)."""
    rng = np.random.default_rng([seed, SPLIT_SEEDS[split], index])

    def obj():
        return {"color": str(rng.choice(list(COLORS))), "shape": str(rng.choice(SHAPES)),
                "size": str(rng.choice(list(RADII)))}

    low, high = BACKGROUND_LEVELS[int(rng.integers(len(BACKGROUND_LEVELS)))]
    level = int(rng.integers(low, high + 1))
    background = [int(np.clip(level + t, 0, 255)) for t in rng.integers(-TINT, TINT + 1, size=3)]
    if rng.random() < 0.35:
        objects, relation = [obj()], None
    else:
        a, b = obj(), obj()
        while (b["color"], b["shape"], b["size"]) == (a["color"], a["shape"], a["size"]):
            b = obj()
        objects, relation = [a, b], str(rng.choice(["left", "above"]))
    _place(objects, relation, rng)
    return {"objects": objects, "relation": relation, "background": background}


def shifted(scene, pixels=10):
    """The scene with every object moved by `pixels` (its relation kept): down for objects side by
    side, right for objects one above the other and for a single object, or the other way where
    that would cross the image's margin -> new scene."""
    def inside(o, dx, dy):
        low, high = MARGIN + RADII[o["size"]], SIZE - MARGIN - RADII[o["size"]]
        return low <= o["center"][0] + dx <= high and low <= o["center"][1] + dy <= high

    dx, dy = (0, pixels) if scene["relation"] == "left" else (pixels, 0)
    if not all(inside(o, dx, dy) for o in scene["objects"]):
        dx, dy = -dx, -dy
    return dict(scene, objects=[dict(o, center=[o["center"][0] + dx, o["center"][1] + dy])
                                for o in scene["objects"]])


def moved(scene, rng):
    """The scene with its objects placed again, independently of where they stood (the objects and
    their relation kept; see _place) -> new scene; rng a numpy Generator."""
    objects = [dict(o) for o in scene["objects"]]
    _place(objects, scene["relation"], rng)
    return dict(scene, objects=objects)


def render(scene, background=None):
    """scene -> PIL RGB image (SIZE x SIZE) on the background: a colour (RGB; default the scene's
    own, or BACKGROUND for a scene that names none) or a picture, uint8 (SIZE, SIZE, 3) (e.g.
    gradient_background())."""
    background = background if background is not None else scene.get("background", BACKGROUND)
    if isinstance(background, np.ndarray):
        image = Image.fromarray(background.astype(np.uint8), "RGB")
    else:
        image = Image.new("RGB", (SIZE, SIZE), tuple(background))
    draw = ImageDraw.Draw(image)
    for o in scene["objects"]:
        (x, y), r = o["center"], RADII[o["size"]]
        fill = tuple(o.get("rgb", COLORS[o["color"]]))  # a drawn shade of its colour, if given
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


def gradient_background(dark=40, light=220):
    """A grey that runs smoothly from dark on the left to light on the right -> uint8 (SIZE,
    SIZE, 3)."""
    row = np.linspace(dark, light, SIZE).round().astype(np.uint8)
    return np.repeat(np.tile(row, (SIZE, 1))[:, :, None], 3, axis=2)


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


def attention_on_objects(scene, words, alphas, boxes, iou=None):
    """Whether the attention of each object word looks at the object it names.

    scene: make_scene's dict; words: the generated words (L,); alphas (L, R) the attention each word
    was chosen with; boxes (R, 4) the regions' pixel boxes (a grid's cells, core.data.features.
    region_boxes, or an image's object boxes); iou: None (a grid) or the least intersection over
    union with the object's bounding box that counts a box as on it (0.5 for object boxes)
    -> list of (hit: the word's most attended region is on the object, chance: the share of regions
    on it) for every colour or shape word that names exactly one object of the scene; a region is
    on an object when it overlaps the object's bounding box (iou None), else by iou.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    out = []
    for word, alpha in zip(words, alphas):
        attribute = "color" if word in COLORS else "shape" if word in SHAPES else None
        named = [o for o in scene["objects"] if attribute and o[attribute] == word]
        if len(named) != 1:
            continue  # not an object word, a wrong one, or one that fits both objects
        (x, y), r = named[0]["center"], RADII[named[0]["size"]]
        if iou is None:
            on = ((boxes[:, 0] < x + r) & (boxes[:, 2] > x - r)
                  & (boxes[:, 1] < y + r) & (boxes[:, 3] > y - r))
        else:
            width = (np.minimum(boxes[:, 2], x + r) - np.maximum(boxes[:, 0], x - r)).clip(0)
            height = (np.minimum(boxes[:, 3], y + r) - np.maximum(boxes[:, 1], y - r)).clip(0)
            both = width * height
            union = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + 4 * r * r
                     - both)
            on = both / union >= iou
        out.append((bool(on[int(np.argmax(alpha))]), float(on.mean())))
    return out
