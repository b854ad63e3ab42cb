"""Object regions ("bottom-up" attention, Anderson et al. 2018): where the objects of an image are,
and one feature vector per object, pooled over its box from the encoder's convolutional map.

Shape letters: Ni images, K boxes of an image (the most of any image in a file; fewer are padded),
C channels of the map, F = C * b * b a box's feature (4608 for VGG16, 2048 for ResNet-101), D after
PCA.

Where the boxes come from (`features_extraction.py --boxes`, recorded in the transform's info):

    plain     the connected parts of the image that differ from its background colour (the median
              of the border pixels): exact on renders of objects on a plain background, such as
              the sample scenes; photographs need a detector
    detector  torchvision's Faster R-CNN (ResNet-50 FPN, COCO-trained weights; `--weights random`
              offline): class-agnostic boxes after non-maximum suppression, an adaptive count
    learned   a bottom-up detector trained here (core/data/bottom_up_detector.py, `--boxes
              detector --detector FILE`): its boxes, and each box's feature from its own box head
              instead of the encoder's map (BoxSource.features)
    FILE      a detection-results file of any detector, COCO's format:
              [{"image_id": int, "bbox": [x, y, w, h], "score": float}, ...]

The adaptive count is Anderson's: the boxes scoring at least BOX_THRESHOLD, but no fewer than
MIN_BOXES and no more than MAX_BOXES (0.2, 10 and 100 in the paper; the top 36 is its fixed
variant). An image where a source finds nothing gets one box, the whole image.

The features: the image is scaled so that its longer side is `side` pixels and padded to a square
(nothing of it is cut, unlike the fc7 and grid features' centre crop, which loses the sides of a
wide photograph), one forward pass of the encoder's convolutional layers gives the map (VGG16:
conv5_3 after its ReLU, stride 16, finer than pool5's 32; ResNet-101: layer4, stride 32), and
RoIAlign (torchvision.ops.roi_align) pools each box to b x b bins, flattened to F: VGG16 3 x 3 of
512 channels (4608), which keeps where in the box the object's parts lie, the difference between a
triangle and a diamond (a linear probe of the sample scenes' box shapes, 600 images, random VGG16:
63% from 1 x 1 bins, 87% from 2 x 2, 95% from 3 x 3 and from 4 x 4); ResNet-101 1 x 1 of 2048,
Anderson's mean-pooled vector.
"""
import functools
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from core.data.image_utils import to_rgb8
from core.util.errors import UserError

BOX_THRESHOLD, MIN_BOXES, MAX_BOXES = 0.2, 10, 100  # Anderson et al.'s adaptive count
# a bottom-up detector trained here (core/data/bottom_up_detector.py) keeps fewer, surer boxes
DETECTION_THRESHOLD, LEARNED_MAX_BOXES = 0.5, 10
NMS_IOU = 0.3  # class-agnostic suppression, as Anderson's feature extraction
PLAIN_TOLERANCE = 40  # a pixel differs from the background by more than this in some channel
PLAIN_MIN_AREA = 0.002  # parts smaller than this share of the image are noise
BOX_SIDE = 448  # default --box_side: the longer side of the image the map is computed on


def select_boxes(scores, threshold=BOX_THRESHOLD, min_boxes=MIN_BOXES, max_boxes=MAX_BOXES):
    """The adaptive count: scores (n,) -> indices of the boxes kept, best first: those scoring at
    least threshold, at least min_boxes and at most max_boxes of them (fewer when there are
    fewer)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    above = int((np.asarray(scores)[order] >= threshold).sum())
    return order[:min(max(above, min_boxes), max_boxes)]


def plain_background_boxes(image, tolerance=PLAIN_TOLERANCE, min_area=PLAIN_MIN_AREA):
    """The objects of an image on a plain background.

    image (H, W, 3) uint8 -> boxes (K, 4) float32 (x0, y0, x1, y1) in pixels, one per connected
    part (8-neighbours) of the pixels differing from the background colour (the median of the
    border pixels) by more than tolerance in some channel, parts smaller than min_area of the image
    dropped, ordered left to right (then top to bottom); K = 0 when nothing stands out.
    """
    from scipy import ndimage

    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])  # (2W + 2H, 3)
    background = np.median(border, axis=0)
    differs = (np.abs(image.astype(np.int16) - background).max(axis=2) > tolerance)  # (H, W)
    labels, _ = ndimage.label(differs, structure=np.ones((3, 3)))
    boxes = []
    for part, where in enumerate(ndimage.find_objects(labels), start=1):
        ys, xs = where
        if (labels[where] == part).sum() >= min_area * image.shape[0] * image.shape[1]:
            boxes.append((xs.start, ys.start, xs.stop, ys.stop))
    return np.array(sorted(boxes), dtype=np.float32).reshape(-1, 4)


def read_detections(path, image_ids, all_ids=None):
    """A COCO detection-results file -> {image_id: (boxes (n, 4) float32 x0, y0, x1, y1, scores
    (n,) float32)} for the given image ids (entries of the dataset's other images, all_ids, are
    skipped: one file may cover every split); UserError naming the entry for a malformed one, an
    image id that is none of the dataset's, or a box of no area. The file is parsed once a process
    (a build checks it before its first image, then reads its boxes)."""
    wanted = set(int(i) for i in image_ids)
    known = frozenset(wanted if all_ids is None else wanted | set(int(i) for i in all_ids))
    path = Path(path)
    try:
        stamp = (path.stat().st_size, path.stat().st_mtime_ns)
    except OSError as e:
        raise UserError(f"cannot read the detections file {path} ({type(e).__name__}: {e})") \
            from None
    found = _parse_detections(str(path), stamp, known)
    return {i: d for i, d in found.items() if i in wanted}


@functools.lru_cache(maxsize=1)
def _parse_detections(path, stamp, known):
    """read_detections' parse of the file at path (stamp: its size and time, so a changed file is
    read again) -> {image_id: (boxes, scores)} of the known ids."""
    del stamp
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the detections file {path} ({type(e).__name__}: {e})") \
            from None
    if not isinstance(entries, list):
        raise UserError(f"{path} is not a COCO detection-results file (a list of {{image_id, "
                        f"bbox, score}}), it holds a {type(entries).__name__}")
    found = {}
    for n, entry in enumerate(entries):
        try:
            image_id, (x, y, w, h), score = _image_id(entry["image_id"]), entry["bbox"], \
                entry["score"]
            box = np.array([x, y, x + w, y + h], dtype=np.float32)
            score = float(score)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path}: entry {n} is not {{image_id, bbox: [x, y, w, h], score}} "
                            f"({type(e).__name__}: {e})") from None
        if image_id not in known:
            raise UserError(f"{path}: entry {n} is for image id {image_id}, which is not one of "
                            "the dataset's images")
        if not np.isfinite(score):
            raise UserError(f"{path}: entry {n} (image {image_id}) has the score "
                            f"{entry['score']}: scores must be finite numbers")
        if not (np.isfinite(box).all() and w > 0 and h > 0):
            raise UserError(f"{path}: entry {n} (image {image_id}) has the box {entry['bbox']}: "
                            "boxes need finite corners and a positive width and height")
        found.setdefault(image_id, []).append((box, score))
    return {i: (np.stack([b for b, _ in d]), np.array([s for _, s in d], dtype=np.float32))
            for i, d in found.items()}


def _image_id(value):
    """A detections entry's image_id -> int; ValueError for one that is not a whole number (1.7,
    "x", true)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"image_id {value!r} is not a whole number")
    return int(value)


def check_inside(boxes, width, height, where):
    """UserError naming `where` when a box (n, 4) x0, y0, x1, y1 lies wholly outside a width x
    height image or reaches more than 5% of its size past an edge (a box of another convention,
    x0, y0, x1, y1 given as x, y, w, h, or of another image size)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    slack = 0.05 * np.array([width, height, width, height])
    outside = ((boxes[:, 2] <= 0) | (boxes[:, 3] <= 0) | (boxes[:, 0] >= width)
               | (boxes[:, 1] >= height))
    beyond = ((boxes[:, :2] < -slack[:2]).any(axis=1) | (boxes[:, 2:] > np.array(
        [width, height]) + slack[2:]).any(axis=1))
    bad = outside | beyond
    if bad.any():
        k = int(np.argmax(bad))
        raise UserError(f"{where}: box {boxes[k].round(1).tolist()} (x0, y0, x1, y1) lies "
                        f"{'wholly outside' if outside[k] else 'past the edges of'} the "
                        f"{int(width)} x {int(height)} image: check the boxes' convention "
                        "(a detections file's bbox is [x, y, width, height] in pixels)")


def clip_boxes(boxes, height, width):
    """boxes (k, 4) in pixels -> (k', 4) float32 inside the image, those of less than a pixel a side
    dropped; the whole image as one box when none is left."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    boxes = boxes[(boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)]
    return boxes if len(boxes) else np.array([[0, 0, width, height]], dtype=np.float32)


class _SquareImages:
    """A map-style dataset of image paths -> (tensor (3, side, side): the image scaled to a longer
    side of `side` pixels, normalised, padded with zeros at its right and bottom, its scale, its
    index)."""

    def __init__(self, paths, side):
        from torchvision import transforms

        from core.data.features import IMAGENET_MEAN, IMAGENET_STD

        self.paths, self.side = [str(p) for p in paths], side
        self.normalise = transforms.Compose([transforms.ToTensor(),
                                             transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        import torch

        try:
            with Image.open(self.paths[i]) as image:
                image = to_rgb8(image)
        except (OSError, ValueError, Image.DecompressionBombError):  # said by BoxSource.boxes
            return torch.zeros(3, self.side, self.side), 1.0, i
        scale = self.side / max(image.size)
        size = tuple(max(1, round(s * scale)) for s in image.size)
        out = torch.zeros(3, self.side, self.side)
        resized = self.normalise(image.resize(size, Image.BILINEAR))  # (3, h, w)
        out[:, :size[1], :size[0]] = resized
        return out, scale, i


def extract_box_features(paths, boxes, spec, side=BOX_SIDE, batch_size=16, device="cpu",
                         progress=True, desc="box features"):
    """The encoder's feature of every box: paths (Ni,) readable image files, boxes a list of Ni
    (k, 4) in their pixels -> a list of Ni (k, F) float16 (F = C * b * b, see the module
    docstring)."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision.ops import roi_align

    from core.data.encoders import encoder_of

    encoder = encoder_of(spec)
    network = encoder.build(spec).to(device)
    bins, stride = encoder.box_bins, encoder.box_stride
    out = [None] * len(paths)
    loader = DataLoader(_SquareImages(paths, side), batch_size=batch_size, shuffle=False)
    with torch.inference_mode():
        for images, scales, idx in tqdm(loader, desc=desc, unit="batch", disable=not progress):
            feature_map = network.box_map(images.to(device))  # (n, C, side / s, side / s)
            rois = [torch.as_tensor(boxes[i] * float(s), dtype=torch.float32, device=device)
                    for i, s in zip(idx.tolist(), scales.tolist())]
            pooled = roi_align(feature_map, rois, output_size=bins, spatial_scale=1 / stride,
                               sampling_ratio=2, aligned=True)  # (sum k, C, b, b)
            pooled = pooled.flatten(1).half().cpu().numpy()  # (sum k, F)
            for i, part in zip(idx.tolist(), np.split(pooled, np.cumsum(
                    [len(r) for r in rois])[:-1])):
                out[i] = part
    return out


def pad_boxes(features, boxes):
    """Lists of Ni per-image features (k_i, F) and boxes (k_i, 4) -> features (Ni, K, F) float16,
    boxes (Ni, K, 4) float32, counts (Ni,) int32, K the most boxes of any image (padding zero)."""
    counts = np.array([len(b) for b in boxes], dtype=np.int32)
    K, F = int(counts.max()), features[0].shape[1]
    out_f = np.zeros((len(boxes), K, F), dtype=np.float16)
    out_b = np.zeros((len(boxes), K, 4), dtype=np.float32)
    for i, (f, b) in enumerate(zip(features, boxes)):
        out_f[i, :len(f)], out_b[i, :len(b)] = f, b
    return out_f, out_b, counts
