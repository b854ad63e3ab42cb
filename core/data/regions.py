"""Regions: what a region decoder reads of a batch of images, as one value.

Shape letters: N images, R regions of an image (the most of any image of the batch when they vary),
D a region's feature.

    features  (N, R, D) float: one feature vector per region (zero rows past an image's own)
    geometry  (N, R, 5) float or None: where each region is, x0 / W, y0 / H, x1 / W, y1 / H,
              area / (W H) (`geometry`), for regions that are boxes; None where a region's place is
              its index (the cells of a grid)
    mask      (N, R) bool or None: which regions are an image's own; None: all of them

Padding is the mask, never a value: a real box of any size is an image's own. A kind of features
(core/data/feature_kinds.py) makes its Regions from its files; the decoders read the three fields
and never ask which kind made them.
"""
from dataclasses import dataclass

import numpy as np

from core.util.errors import UserError

GEOMETRY = 5  # x0 / W, y0 / H, x1 / W, y1 / H, area / (W H): the place a box adds to its feature


@dataclass(frozen=True)
class Regions:
    """features (N, R, D), geometry (N, R, 5) or None, mask (N, R) bool or None (see the module).
    Indexing with rows, regions[rows] (rows int array (M,) or a slice), gives the Regions of those
    images; len() is N."""

    features: object
    geometry: object = None
    mask: object = None

    def __len__(self):
        return len(self.features)

    def __getitem__(self, rows):
        return Regions(*(None if a is None else a[rows] for a in self.arrays()))

    def arrays(self):
        """(features, geometry, mask), the fields in order."""
        return self.features, self.geometry, self.mask

    def map(self, float_array, bool_array=None):
        """The same regions with features and geometry passed through float_array and the mask
        through bool_array (e.g. to torch tensors); the mask as is when bool_array is None."""
        bool_array = bool_array or (lambda a: a)
        return Regions(float_array(self.features),
                       None if self.geometry is None else float_array(self.geometry),
                       None if self.mask is None else bool_array(self.mask))

    def astype(self, dtype):
        """The same regions with features and geometry of that float dtype."""
        return self.map(lambda a: a.astype(dtype))

    @property
    def shape(self):
        """The features' shape (N, R, D)."""
        return self.features.shape

    @property
    def ndim(self):
        return 3

    @property
    def dtype(self):
        return self.features.dtype

    def own(self):
        """(N, R) bool: which regions are an image's own (all of them without a mask)."""
        if self.mask is None:
            return np.ones(self.features.shape[:-1], dtype=bool)
        return np.asarray(self.mask, dtype=bool)


def as_regions(regions):
    """A Regions, or a (N, R, D) array read as regions of one place each (grid cells) -> Regions."""
    return regions if isinstance(regions, Regions) else Regions(regions)


def concatenate(parts):
    """Regions of the same R and D -> one Regions of all their images, in order."""
    fields = list(zip(*(p.arrays() for p in parts)))
    return Regions(*(None if f[0] is None else np.concatenate(f) for f in fields))


def geometry(boxes, sizes):
    """boxes (..., K, 4) pixel corners x0, y0, x1, y1, sizes (..., 2) image width, height ->
    (..., K, 5): each box's corners as fractions of its image, then its area as one: what lets a
    box's feature know where it is."""
    W = np.asarray(sizes, dtype=np.float32)[..., None, 0:1]
    H = np.asarray(sizes, dtype=np.float32)[..., None, 1:2]
    b = np.asarray(boxes, dtype=np.float32)
    x0, x1, y0, y1 = b[..., 0:1] / W, b[..., 2:3] / W, b[..., 1:2] / H, b[..., 3:4] / H
    return np.concatenate([x0, y0, x1, y1, (x1 - x0) * (y1 - y0)], axis=-1)


def geometry_boxes(geometry_rows, width, height):
    """geometry (K, 5) of an image's boxes -> their boxes (K, 4) in the pixels of an image of that
    width and height (the inverse of geometry)."""
    g = np.asarray(geometry_rows[:, :4], dtype=np.float32)  # (K, 4), fractions of the image
    return g * np.array([width, height, width, height], dtype=np.float32)


def region_boxes(grid_size, height, width):
    """Where the regions of an image lie in it: the grid covers the centre crop that
    core.data.features.preprocess takes (shorter side scaled to 256, 224 x 224 cut from the middle) -> (R, 4) float boxes
    (x0, y0, x1, y1) in the image's pixels, row-major like the regions."""
    side = min(height, width) * 224 / 256  # the crop, in the image's pixels
    x0, y0 = (width - side) / 2, (height - side) / 2
    cell = side / grid_size
    rows, cols = np.divmod(np.arange(grid_size ** 2), grid_size)
    return np.stack([x0 + cols * cell, y0 + rows * cell, x0 + (cols + 1) * cell, y0
                     + (rows + 1) * cell], axis=1)


def box_regions(features, boxes, counts, sizes):
    """The arrays of a box file -> Regions: features (Ni, K, D), boxes (Ni, K, 4), counts (Ni,),
    sizes (Ni, 2) -> features (Ni, K, D) and geometry (Ni, K, 5) float16, zero past an image's
    count, and the mask of its first count boxes."""
    mask = np.arange(features.shape[1]) < np.asarray(counts)[:, None]  # (Ni, K)
    own = mask[..., None]
    return Regions(np.where(own, features, 0).astype(np.float16),
                   np.where(own, geometry(boxes, sizes), 0).astype(np.float16), mask)


def check_boxes(arrays, path):
    """UserError naming the file and the first bad image when a split's box arrays (features
    (Ni, K, D), boxes (Ni, K, 4), counts (Ni,), image_sizes (Ni, 2)) do not fit together: shapes,
    a count outside 1..K, an image size that is not positive, or one of an image's own boxes not
    finite or of no area."""
    features, boxes, counts, sizes = (arrays[k] for k in ("features", "boxes", "counts",
                                                          "image_sizes"))
    if features.ndim != 3 or boxes.shape != features.shape[:2] + (4,) \
            or counts.shape != features.shape[:1] or sizes.shape != (len(features), 2):
        raise UserError(f"{path}: features {features.shape}, boxes {boxes.shape}, counts "
                        f"{counts.shape} and image_sizes {sizes.shape} do not fit (Ni, K, D), "
                        "(Ni, K, 4), (Ni,), (Ni, 2): rebuild the file")
    if not np.issubdtype(counts.dtype, np.integer):
        raise UserError(f"{path}: counts must hold integers, not {counts.dtype}")
    problems = (("a count outside 1..K", (counts < 1) | (counts > features.shape[1])),
                ("an image size that is not positive", ~(np.asarray(sizes) > 0).all(axis=1)))
    for what, bad in problems:
        if bad.any():
            raise UserError(f"{path}: image row {int(np.argmax(bad))} has {what} "
                            f"({int(bad.sum())} rows do): rebuild the file")
    real = np.arange(features.shape[1]) < counts.clip(0, features.shape[1])[:, None]  # (Ni, K)
    with np.errstate(invalid="ignore"):
        good = (np.isfinite(boxes).all(axis=2) & (boxes[..., 2] > boxes[..., 0])
                & (boxes[..., 3] > boxes[..., 1]))
    bad = (real & ~good).any(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        box = int(np.argmax(real[row] & ~good[row]))
        raise UserError(f"{path}: image row {row}, box {box} is {boxes[row, box].tolist()}: an "
                        "image's boxes need finite corners x0 < x1, y0 < y1; rebuild the file")
    size = np.concatenate([sizes, sizes], axis=1)[:, None, :].astype(np.float64)  # (Ni, 1, 4)
    with np.errstate(invalid="ignore"):
        away = ((boxes < -0.05 * size) | (boxes > 1.05 * size)).any(axis=2) & real  # (Ni, K)
    if away.any():
        row = int(np.argmax(away.any(axis=1)))
        box = int(np.argmax(away[row]))
        raise UserError(f"{path}: image row {row}, box {box} is {boxes[row, box].tolist()}, "
                        f"outside its {sizes[row, 0]:g} x {sizes[row, 1]:g} image: boxes are "
                        "x0, y0, x1, y1 in the image's pixels; rebuild the file")
