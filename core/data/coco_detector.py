"""torchvision's COCO-trained Faster R-CNN as a class-agnostic source of boxes
(core/data/box_sources.py: BoxSource "detector"). Imports torch: import it where it is used."""
import numpy as np
import torch
from torchvision.ops import nms

from core.data.boxes import NMS_IOU

DETECTOR_MIN_SIDE = 32  # an image thinner than this gets no detections (then itself as its box)


class Detector:
    """torchvision's Faster R-CNN (ResNet-50 FPN) as a class-agnostic box proposer: image (H, W, 3)
    uint8 -> boxes (n, 4) float32, scores (n,) float32, all classes together after non-maximum
    suppression at NMS_IOU (its own suppression is per class); none for an image thinner than
    DETECTOR_MIN_SIDE pixels (torchvision scales its shorter side to 800 but its longer to at most
    1333, which leaves a 4000 x 3 image no pixel)."""

    def __init__(self, spec, device="cpu"):
        from torchvision.models.detection import (
            FasterRCNN_ResNet50_FPN_Weights, fasterrcnn_resnet50_fpn)

        from core.data.features import torchvision_network

        def build(weights):
            return fasterrcnn_resnet50_fpn(weights=weights, weights_backbone=None,
                                           box_score_thresh=0.0, box_detections_per_img=300)

        self.device = device
        self.model = torchvision_network(build, FasterRCNN_ResNet50_FPN_Weights.COCO_V1, spec,
                                          "Faster R-CNN").to(device).eval()

    def __call__(self, image):
        if min(image.shape[:2]) < DETECTOR_MIN_SIDE:  # too thin to scale: the whole image
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255  # a writable copy
        with torch.inference_mode():
            out = self.model([tensor.to(self.device)])[0]
        keep = nms(out["boxes"], out["scores"], NMS_IOU)
        return out["boxes"][keep].cpu().numpy(), out["scores"][keep].cpu().numpy()
