"""The image encoders of the features (their table, torch-free: the scripts' --help and checks
read it) and the weights a build names.

    vgg16      VGG16: fc7 (4096-d, after ReLU) per image, pool5 or conv5_3 (512 channels) cells
    resnet101  ResNet-101: the mean of its last block (2048-d), the block's cells (2048 channels)
"""
import importlib
from dataclasses import dataclass
from pathlib import Path

from core.util.errors import UserError
from core.util.fileio import file_sha256

FC7_DIM = 4096
GRID_CHANNELS = 512
GRID_SIZES = (7, 14)  # pool5 or conv5_3 (after ReLU)


@dataclass(frozen=True)
class Encoder:
    """An image encoder: label (for messages); pooled_dim F, the vector per image; grid_channels C
    of a region; network: "module:Class" of its torch module (forward(images, grid_size),
    box_map(images)), built from a weights spec by `build` (imported then, so that reading the
    table, as --help does, imports no torch);
    crop(grid_size): the side of the centre crop it reads (the ImageNet resize-then-crop, at
    256:224); box_bins, box_stride: the RoIAlign bins a side of a box and the stride of box_map
    (core/data/boxes.py)."""

    name: str
    label: str
    pooled_dim: int
    grid_channels: int
    network: object
    crop: object
    box_bins: int
    box_stride: int

    def build(self, spec):
        """The encoder's torch module with the weights a spec names."""
        module, name = self.network.split(":")
        return getattr(importlib.import_module(module), name)(spec)


ENCODERS = {
    "vgg16": Encoder("vgg16", "VGG16", FC7_DIM, GRID_CHANNELS, "core.data.features:VGG16FC7", lambda grid: 224, 3, 16),
    "resnet101": Encoder("resnet101", "ResNet-101", 2048, 2048, "core.data.features:ResNet101Features",
                         lambda grid: 448 if grid == 14 else 224, 1, 32),
}


def parse_weights(value, seed=0, encoder="vgg16"):
    """--weights value -> spec dict: {"weights": "imagenet"}, {"weights": "random", "seed": S}
    or {"weights": "file", "path": ..., "sha256": ...}, with "encoder" (a key of ENCODERS) when it
    is not the default VGG16 (the CS231n layout's)."""
    if value == "imagenet":
        spec = {"weights": "imagenet"}
    elif value == "random":
        spec = {"weights": "random", "seed": int(seed)}
    else:
        path = Path(value)
        if not path.is_file():
            raise UserError(f'--weights "{value}" is neither imagenet, random, nor an existing '
                            f'state_dict file')
        spec = {"weights": "file", "path": str(path),
                "sha256": file_sha256(path)}
    return spec if encoder == "vgg16" else dict(spec, encoder=encoder)


def encoder_of(spec):
    """The ENCODERS row of a weights spec (VGG16 when it names none)."""
    return ENCODERS[spec.get("encoder", "vgg16")]


def describe_weights(spec):
    """One line for logs and READMEs."""
    name = encoder_of(spec).label
    if spec["weights"] == "random":
        return f"{name} with RANDOM weights (seed {spec['seed']}), not ImageNet-trained"
    if spec["weights"] == "file":
        return f"{name} weights from {spec['path']}"
    return f"{name} with torchvision's ImageNet weights"
