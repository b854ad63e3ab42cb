"""The sample scenes drawn as photographs vary: backgrounds that are not one flat colour (smooth
gradients, noise and textures of several scales), object colours that vary slightly, blur and
JPEG compression; and where each object is (its box), with its class and attributes, for the
bottom-up detector (core/datasets/train_detector.py).

The captions of a scene are unchanged: every variation keeps what a caption says (colour, shape,
size, relation). Shape letters: k objects of a scene.
"""
import io

import numpy as np
from PIL import Image, ImageFilter
from scipy.ndimage import gaussian_filter

from core.datasets import scenes as sample

BACKGROUND_KINDS = ("flat", "gradient", "noise", "texture")
OBJECT_SHADE = 14  # the most an object's drawn colour moves from its colour, per channel


def object_box(o):
    """An object of a scene -> its box (x0, y0, x1, y1) in pixels, as render draws it."""
    (x, y), r = o["center"], sample.RADII[o["size"]]
    if o["shape"] == "square":
        s = int(r * 0.85)
        return [x - s, y - s, x + s + 1, y + s + 1]
    if o["shape"] == "triangle":
        return [x - r, y - r, x + r + 1, y + r * 0.8 + 1]
    return [x - r, y - r, x + r + 1, y + r + 1]


def scene_targets(scene, scale=1.0):
    """A scene -> boxes (k, 4) float32 pixels (times scale), labels (k,) int64 in 1..4 (the index
    of its shape in SHAPES, plus one: 0 is the background), attributes (k, 2) int64 (colour index
    in COLORS, size index in RADII)."""
    objects = scene["objects"]
    boxes = np.array([object_box(o) for o in objects], np.float32) * scale
    labels = np.array([sample.SHAPES.index(o["shape"]) + 1 for o in objects], np.int64)
    colours, sizes = list(sample.COLORS), list(sample.RADII)
    attributes = np.array([[colours.index(o["color"]), sizes.index(o["size"])]
                           for o in objects], np.int64)
    return boxes, labels, attributes


def varied_background(rng, kind=None, side=sample.SIZE):
    """A background of a kind (BACKGROUND_KINDS; drawn when None) around a training grey (a dark
    or light level of sample.BACKGROUND_LEVELS, tinted) -> uint8 (side, side, 3)."""
    kind = kind or str(rng.choice(BACKGROUND_KINDS))
    low, high = sample.BACKGROUND_LEVELS[int(rng.integers(len(sample.BACKGROUND_LEVELS)))]
    level = rng.integers(low, high + 1) + rng.integers(-sample.TINT, sample.TINT + 1, size=3)
    base = np.broadcast_to(level.astype(np.float32), (side, side, 3)).copy()
    ys, xs = np.mgrid[0:side, 0:side] / side
    if kind == "gradient":  # a ramp of up to +-45 levels along a random direction
        angle, depth = rng.uniform(0, 2 * np.pi), rng.uniform(20, 45)
        base += (depth * ((np.cos(angle) * xs + np.sin(angle) * ys) * 2 - 1))[:, :, None]
    elif kind == "noise":  # grain smoothed at a random scale
        grain = rng.normal(0, rng.uniform(6, 16), size=(side, side))
        sigma = rng.uniform(0, 3)
        smooth = gaussian_filter(grain, sigma) * (1 + sigma) if sigma > 0.3 else grain
        base += smooth[:, :, None]
    elif kind == "texture":  # stripes or checks of 2 to 16 pixels
        period, amplitude = rng.uniform(2, 16), rng.uniform(8, 25)
        angle = rng.uniform(0, np.pi)
        phase = (np.cos(angle) * xs + np.sin(angle) * ys) * side / period
        wave = np.sin(2 * np.pi * phase)
        if rng.random() < 0.5:
            wave = np.sign(wave * np.sin(2 * np.pi * (-np.sin(angle) * xs + np.cos(angle) * ys)
                                         * side / period))
        base += (amplitude * wave)[:, :, None]
    return base.clip(0, 255).round().astype(np.uint8)


def shaded(scene, rng, shade=OBJECT_SHADE):
    """The scene with each object drawn in a shade of its colour (up to `shade` per channel)."""
    objects = [dict(o, rgb=[int(np.clip(c + rng.integers(-shade, shade + 1), 0, 255))
                            for c in sample.COLORS[o["color"]]]) for o in scene["objects"]]
    return dict(scene, objects=objects)


def blurred(image, radius):
    """A PIL image blurred (Gaussian, radius in pixels)."""
    return image.filter(ImageFilter.GaussianBlur(radius))


def jpeg(image, quality):
    """A PIL image after JPEG compression at `quality` (decoded back)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def render_varied(scene, rng):
    """A scene as a photograph might show it: a background of a random kind, objects in shades of
    their colours, and sometimes a slight blur (a third of the scenes, radius 0.4-1.2) and JPEG
    compression (a third, quality 35-90) -> PIL RGB image."""
    image = sample.render(shaded(scene, rng), varied_background(rng))
    if rng.random() < 1 / 3:
        image = blurred(image, rng.uniform(0.4, 1.2))
    if rng.random() < 1 / 3:
        image = jpeg(image, rng.integers(35, 91))
    return image
