"""A bottom-up detector trained here: torchvision's Faster R-CNN with a small backbone, an object
head over the scenes' shapes and an attribute head over their colours and sizes (Anderson et al.
2018 train theirs on Visual Genome's 1600 objects and 400 attributes; here the sample scenes'
objects, at their scale). Each box's region feature is the detector's box-head representation
of the box (the mean-pooled 2048-d vectors of the standard tsv files are the same thing for a
ResNet-101 head), so the regions a decoder attends to are what the detector learned to tell apart.

Shape letters: N images, k boxes of an image, E the box head's representation (REPRESENTATION).

The model (`BottomUpDetector`):
    backbone   four 3 x 3 convolutions with ReLU (3 -> 32 -> 64 -> 96 -> 128 channels, the first
               three of stride 2): one map of stride 8 (16 x 16 for a 128-pixel scene)
    RPN        anchors of 12-48 pixels, ratios 0.5 / 1 / 2, a few hundred proposals (COCO's
               defaults, 2000 a scene, are far more than 1-2 objects need)
    box head   RoIAlign 7 x 7 -> two fully connected layers of E = 256 (torchvision's TwoMLPHead):
               the region feature; object classes (the shapes and background) and box deltas
    attributes one linear head per attribute group (colour, size) on the box head's representation
               of every ground-truth box in training, of each detected box after
Weights and configuration are saved as one .npz of arrays and a JSON string, loaded without pickle
(`save_detector`, `load_detector`). This module imports torch: import it where it is used.
"""
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign, nms

from core.data.boxes import DETECTION_THRESHOLD, LEARNED_MAX_BOXES
from core.util.errors import UserError
from core.util.fileio import atomic_write, file_sha256

REPRESENTATION = 256
FORMAT = "bottom-up-detector/1"


@dataclass(frozen=True)
class DetectorConfig:
    """What a detector is built from: its object classes (background excluded), its attribute
    groups ({group: [values]}), the side its images are scaled to (the longer one; the sample
    scenes' 128 stays 128), and its anchors (pixels of that side)."""

    classes: tuple
    attributes: dict = field(default_factory=dict)
    side: int = 128
    anchors: tuple = (12, 16, 24, 32, 48)
    channels: tuple = (32, 64, 96, 128)

    def to_json(self):
        return json.dumps({"format": FORMAT, **asdict(self)})

    @classmethod
    def from_json(cls, text, where):
        try:
            raw = json.loads(text)
            if raw.pop("format", None) != FORMAT:
                raise ValueError("not a bottom-up detector")
            return cls(classes=tuple(raw["classes"]), attributes=dict(raw["attributes"]),
                       side=int(raw["side"]), anchors=tuple(raw["anchors"]),
                       channels=tuple(raw["channels"]))
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{where} is not a bottom-up detector's weights file "
                            f"({type(e).__name__}: {e})") from None


def _backbone(channels):
    """The small convolutional backbone -> nn.Sequential with its out_channels."""
    layers, previous = [], 3
    for k, width in enumerate(channels):
        layers += [nn.Conv2d(previous, width, 3, stride=2 if k < 3 else 1, padding=1),
                   nn.ReLU(inplace=True)]
        previous = width
    backbone = nn.Sequential(*layers)
    backbone.out_channels = previous
    return backbone


class BottomUpDetector(nn.Module):
    """Faster R-CNN with attribute heads (the module docstring). Images are lists of (3, H, W)
    float tensors in [0, 1]."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        backbone = _backbone(config.channels)
        anchors = AnchorGenerator((tuple(config.anchors),), ((0.5, 1.0, 2.0),))
        self.rcnn = FasterRCNN(
            backbone, min_size=config.side,
            max_size=config.side, rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
            box_head=TwoMLPHead(backbone.out_channels * 49, REPRESENTATION),
            box_predictor=FastRCNNPredictor(REPRESENTATION, len(config.classes) + 1),
            rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100,
            rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=50,
            rpn_batch_size_per_image=64, box_batch_size_per_image=32,
            box_score_thresh=0.0, box_nms_thresh=0.3, box_detections_per_img=20)
        self.attribute_heads = nn.ModuleDict(
            {g: nn.Linear(REPRESENTATION, len(v)) for g, v in config.attributes.items()})

    def _features(self, images, targets=None):
        """images -> (ImageList, {"0": the backbone's map}, targets scaled like the images)."""
        image_list, targets = self.rcnn.transform(images, targets)
        return (image_list, OrderedDict([("0", self.rcnn.backbone(image_list.tensors))]),
                targets)

    def represent(self, features, boxes, image_sizes):
        """The box head's representation (sum k, E) of boxes (a list of (k, 4) in the transformed
        images' pixels): what a box is to the detector, its region feature."""
        pooled = self.rcnn.roi_heads.box_roi_pool(features, boxes, image_sizes)
        return self.rcnn.roi_heads.box_head(pooled)

    def losses(self, images, targets):
        """Training: images and their targets ({"boxes" (k, 4) pixels, "labels" (k,) in 1..C,
        "attributes" (k, groups) value indices}) -> {name: scalar loss}: the RPN's, the box
        head's, and one cross-entropy per attribute group over the ground-truth boxes."""
        image_list, features, scaled = self._features(images, targets)
        proposals, rpn = self.rcnn.rpn(image_list, features, scaled)
        _, heads = self.rcnn.roi_heads(features, proposals, image_list.image_sizes, scaled)
        losses = {**rpn, **heads}
        if len(self.attribute_heads):
            rep = self.represent(features, [t["boxes"] for t in scaled], image_list.image_sizes)
            truth = torch.cat([t["attributes"] for t in scaled])
            for g, (name, head) in enumerate(self.attribute_heads.items()):
                losses[f"loss_{name}"] = F.cross_entropy(head(rep), truth[:, g])
        return losses

    def detect(self, images):
        """Inference (call under torch.inference_mode, in eval mode): images -> one dict an
        image: "boxes" (k, 4) in its own pixels, "scores" (k,), "labels" (k,) in 1..C,
        "features" (k, E), and per attribute group (k,) value indices."""
        image_list, features, _ = self._features(images)
        proposals, _ = self.rcnn.rpn(image_list, features)
        found, _ = self.rcnn.roi_heads(features, proposals, image_list.image_sizes)
        rep = self.represent(features, [f["boxes"] for f in found], image_list.image_sizes)
        original = [tuple(im.shape[-2:]) for im in images]
        scaled = self.rcnn.transform.postprocess([dict(f) for f in found],
                                                 image_list.image_sizes, original)
        out, start = [], 0
        for f, s in zip(found, scaled):
            k = len(f["boxes"])
            item = {"boxes": s["boxes"], "scores": f["scores"], "labels": f["labels"],
                    "features": rep[start:start + k]}
            for name, head in self.attribute_heads.items():
                item[name] = head(item["features"]).argmax(1)
            out.append(item)
            start += k
        return out

    def features_of(self, images, boxes):
        """The region features (k, E) of given boxes ((k, 4) in each image's own pixels, a list
        an image): the same representation detect gives its boxes."""
        image_list, features, _ = self._features(images)
        scaled = [b * torch.tensor([w1 / w0, h1 / h0, w1 / w0, h1 / h0], dtype=b.dtype)
                  for b, (h1, w1), (h0, w0) in zip(
                      boxes, image_list.image_sizes, [im.shape[-2:] for im in images])]
        return self.represent(features, scaled, image_list.image_sizes)


def keep(found, threshold=None, min_boxes=1, max_boxes=None, nms_iou=0.3):
    """One image's detections (a dict of detect's) -> the kept ones as numpy arrays, the regions
    of a dataset: all classes together after non-maximum suppression at nms_iou, those scoring at
    least `threshold` (DETECTION_THRESHOLD), at least min_boxes and at most max_boxes
    (LEARNED_MAX_BOXES) of the best."""
    threshold = DETECTION_THRESHOLD if threshold is None else threshold
    max_boxes = LEARNED_MAX_BOXES if max_boxes is None else max_boxes
    order = nms(found["boxes"], found["scores"], nms_iou)  # by score, highest first
    count = int((found["scores"][order] >= threshold).sum())
    order = order[:min(max(count, min_boxes), max_boxes)]
    return {k: v[order].detach().cpu().numpy() for k, v in found.items()}


def save_detector(model, path, extra=None):
    """A detector's weights (as float16 arrays: half the size; load_detector makes them float32
    again, so use the loaded model, not the saved one, for what must match a loaded one) and
    config (JSON) -> one .npz at `path`, written atomically; extra: JSON-able facts recorded
    beside (how it was trained, its scores)."""
    arrays = {f"w/{k}": v.detach().cpu().half().numpy() for k, v in model.state_dict().items()}
    arrays["config"] = np.array(model.config.to_json())
    arrays["extra"] = np.array(json.dumps(extra or {}))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_detector(path, device="cpu"):
    """A .npz written by save_detector -> (the detector in eval mode on `device`, its extra
    facts); UserError for a missing or foreign file. Reads arrays only (allow_pickle=False)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            config = DetectorConfig.from_json(str(f["config"]), path)
            extra = json.loads(str(f["extra"]))
            state = {k[2:]: torch.from_numpy(f[k].astype(np.float32)) for k in f.files
                     if k.startswith("w/")}
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot read the detector weights {path} ({type(e).__name__}: {e})") \
            from None
    model = BottomUpDetector(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{path}: weights that do not fit its detector ({str(e)[:200]})") from None
    return model.to(device).eval(), extra


def check_detector_file(source):
    """UserError when a dataset's detector weights are missing or not the ones it was built
    with (their SHA-256)."""
    path = Path(source["path"])
    if not path.is_file():
        raise UserError(f"{path.parent} was built with the detector {path.name}, which is not "
                        "there: copy it back (or rebuild the dataset)")
    if source.get("sha256") and file_sha256(path) != source["sha256"]:
        raise UserError(f"{path} is not the detector {path.parent} was built with (another "
                        "file's SHA-256): its boxes and features would not be the dataset's")


def to_tensor(image):
    """An image, PIL RGB or uint8 (H, W, 3) -> (3, H, W) float32 tensor in [0, 1]."""
    return torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1).contiguous()


class LearnedBoxes:
    """A trained detector as a source of boxes (core.data.box_sources.BoxSource "learned"): image
    (H, W, 3) uint8 -> boxes (n, 4) float32 pixels, scores (n,) float32, every detection after
    class-agnostic suppression, best first (the source's adaptive count then keeps some)."""

    def __init__(self, path, device="cpu"):
        self.model, _ = load_detector(path, device)
        self.device = device

    def __call__(self, image):
        with torch.inference_mode():
            found = self.model.detect([to_tensor(image).to(self.device)])[0]
        kept = keep(found, threshold=0.0, min_boxes=0, max_boxes=len(found["scores"]))
        return kept["boxes"], kept["scores"]


def learned_box_features(path, images, boxes, batch_size=32, device="cpu", progress=False,
                         desc="box features"):
    """The trained detector's box-head representation of given boxes: images (Ni,) image files
    (one that cannot be read: a black image), boxes a list of Ni (k, 4) in their pixels -> a
    list of Ni (k, E) float16. A box's feature depends on its image and itself only (RoIAlign of
    the backbone's map, then the box head, box by box)."""
    from PIL import Image
    from tqdm import tqdm

    from core.data.image_utils import to_rgb8

    model, _ = load_detector(path, device)
    out = []
    with torch.inference_mode():
        for s in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch",
                      disable=not progress):
            batch = []
            for p in images[s:s + batch_size]:
                try:
                    with Image.open(p) as opened:
                        batch.append(to_tensor(to_rgb8(opened)).to(device))
                except (OSError, ValueError, Image.DecompressionBombError):  # said by the boxes
                    batch.append(torch.zeros(3, model.config.side, model.config.side,
                                             device=device))
            rois = [torch.as_tensor(b, dtype=torch.float32, device=device)
                    for b in boxes[s:s + batch_size]]
            rep = model.features_of(batch, rois).half().cpu().numpy()
            out += np.split(rep, np.cumsum([len(r) for r in rois])[:-1])
    return out
