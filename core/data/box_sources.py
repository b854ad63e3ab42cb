"""Where an image's boxes and their features come from (`features_extraction.py --boxes`,
recorded in the dataset's box transform info; core/data/boxes.py describes each source), and what
a box decoder reads of new images (`compute_box_regions`, for `inference.py --image`).

Shape letters: Ni images, k boxes of an image, K the most of any image, F a box's feature, D after
PCA.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from core.data.boxes import (
    BOX_SIDE, BOX_THRESHOLD, MAX_BOXES, MIN_BOXES, PLAIN_MIN_AREA, PLAIN_TOLERANCE, check_inside,
    clip_boxes, extract_box_features, pad_boxes, plain_background_boxes, read_detections,
    select_boxes)
from core.data.image_utils import to_rgb8
from core.data.regions import box_regions
from core.util.errors import UserError


@dataclass(frozen=True)
class BoxSource:
    """Where an image's boxes come from: kind "plain", "detector", "learned" (path: its weights)
    or "file" (path: the detections file), and the adaptive count's threshold, min_boxes and
    max_boxes (not used by "plain")."""

    kind: str
    path: str = None
    threshold: float = BOX_THRESHOLD
    min_boxes: int = MIN_BOXES
    max_boxes: int = MAX_BOXES

    @classmethod
    def parse(cls, value, detector=None, **count):
        """--boxes value -> BoxSource ("plain", "detector", or a detections file that exists);
        "detector" with `detector`, a trained bottom-up detector's weights file: "learned"."""
        if value == "detector" and detector:
            if not Path(detector).is_file():
                raise UserError(f"--detector {detector}: no such file (train one with `python -m "
                                "core.datasets.train_detector`)")
            return cls("learned", str(detector), **count)
        if value in ("plain", "detector"):
            return cls(value, **count)
        if not Path(value).is_file():
            raise UserError(f'--boxes "{value}" is neither plain, detector, nor an existing COCO '
                            "detection-results file")
        return cls("file", str(value), **count)

    def info(self):
        """What the dataset's info records of it (JSON-able)."""
        if self.kind == "plain":
            return {"source": "plain", "tolerance": PLAIN_TOLERANCE, "min_area": PLAIN_MIN_AREA}
        return {"source": self.kind, **({"path": self.path} if self.path else {}),
                "threshold": self.threshold, "min_boxes": self.min_boxes,
                "max_boxes": self.max_boxes}

    def boxes(self, paths, image_ids, spec, device="cpu", progress=False, all_ids=None):
        """Image files (Ni,) and their COCO ids -> a list of Ni boxes (k, 4) float32 in pixels, each
        clipped to its image (an image of no box gets the whole image as one), the images' sizes
        (Ni, 2) (width, height), and {index: why} of files that could not be read (their box
        (0, 0, 1, 1) of a 1 x 1 image); all_ids: every image id of the dataset (a detections file's
        entries for the other splits' images are skipped, those of no image refused)."""
        detections = (read_detections(self.path, image_ids, all_ids) if self.kind == "file"
                      else None)
        detector = (_coco_detector(spec, device) if self.kind == "detector" else
                    _learned(self.path, device) if self.kind == "learned" else None)
        out, bad, sizes = [], {}, np.ones((len(paths), 2), dtype=np.float32)
        for n, (path, image_id) in enumerate(tqdm(list(zip(paths, image_ids)), desc="boxes",
                                                  unit="image", disable=not progress)):
            try:
                with Image.open(path) as opened:
                    image = np.asarray(to_rgb8(opened))
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                bad[n] = f"{type(e).__name__}: {e}"
                out.append(np.array([[0, 0, 1, 1]], np.float32))
                continue
            sizes[n] = image.shape[1], image.shape[0]
            if self.kind == "plain":
                boxes = plain_background_boxes(image)
            else:
                boxes, scores = (detector(image) if detector else
                                 detections.get(int(image_id), (np.zeros((0, 4)), np.zeros(0))))
                if detections is not None:
                    check_inside(boxes, image.shape[1], image.shape[0],
                                 f"{self.path}, image {int(image_id)} ({path})")
                boxes = boxes[select_boxes(scores, self.threshold, self.min_boxes, self.max_boxes)]
            out.append(clip_boxes(boxes, *image.shape[:2]))
        return out, sizes, bad


    def features(self, paths, boxes, spec, side=BOX_SIDE, batch_size=16, device="cpu",
                 progress=False, desc="box features"):
        """The feature of every box (a list of Ni (k, F) float16): a trained detector's own
        box-head representation ("learned"), else the encoder's map pooled over the box
        (extract_box_features)."""
        if self.kind == "learned":
            from core.data.bottom_up_detector import learned_box_features

            return learned_box_features(self.path, paths, boxes, device=device,
                                        progress=progress, desc=desc)
        return extract_box_features(paths, boxes, spec, side=side, batch_size=batch_size,
                                    device=device, progress=progress, desc=desc)


def _learned(path, device):
    """A trained bottom-up detector as a box finder (core/data/bottom_up_detector.py)."""
    from core.data.bottom_up_detector import LearnedBoxes

    return LearnedBoxes(path, device)


def _coco_detector(spec, device):
    """torchvision's COCO-trained Faster R-CNN as a box finder (core/data/coco_detector.py)."""
    from core.data.coco_detector import Detector

    return Detector(spec, device)


def compute_box_regions(paths, transform, info, device="cpu", progress=False):
    """Image files -> what a box decoder reads of them, Regions (core/data/regions.py; an unreadable
    file gets one zero box over the image), and {index: why} for files that could not be read; the
    boxes come from the source the dataset's info names, UserError when it cannot find boxes in new
    images (a detections file, imported features)."""
    from core.data.features import project

    source = dict(info.get("boxes", {}))
    if source.get("source") == "learned":  # the detector the dataset was built with, inside it
        source["path"] = str(Path(info["data_dir"]) / source["path"])
        from core.data.bottom_up_detector import check_detector_file

        check_detector_file(source)
    if source.get("source") not in ("plain", "detector", "learned"):
        raise UserError(f"this dataset's boxes came from {source.get('source', 'elsewhere')} "
                        f"({source.get('path', 'no detector of this repository')}), which has none "
                        "for new images: build the dataset with --boxes detector (or plain) to "
                        "caption new images")
    count = {k: source[k] for k in ("threshold", "min_boxes", "max_boxes") if k in source}
    boxes_source = BoxSource(source["source"], source.get("path"), **count)
    boxes, sizes, bad = boxes_source.boxes(paths, [0] * len(paths), info["vgg16"], device,
                                           progress)
    readable = [p for k, p in enumerate(paths) if k not in bad]
    found = iter(boxes_source.features(readable, [b for k, b in enumerate(boxes) if k not in bad],
                                       info["vgg16"], side=info.get("side", BOX_SIDE),
                                       device=device))
    features = [np.zeros((1, transform["components"].shape[0]), np.float32) if k in bad
                else project(next(found), transform) for k in range(len(paths))]
    padded, padded_boxes, counts = pad_boxes(features, boxes)
    return box_regions(padded, padded_boxes, counts, sizes), bad
