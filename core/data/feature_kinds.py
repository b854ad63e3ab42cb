"""The one table of the kinds of image features a decoder reads: a kind is one row here that knows
its files, its shape, how to check them, what it adds to a model's sizes, and how to compute it for
new images (`inference.py --image`); the scripts and the registry read it instead of branching.

Shape letters: Ni images, D feature size, R regions per image, K boxes (the most of an image).

    fc7    one 512-d PCA vector of VGG16's fc7 per image: (Ni, D) (the CS231n layout)
    grid   a g x g grid of VGG16 pool5 / conv5_3 regions, each PCA-reduced: (Ni, R, D), R = g * g
    boxes  the objects of an image, each a PCA-reduced feature pooled over its box, with the box:
           read as (Ni, K, D + 5), each box's feature then its geometry (core/data/boxes.py:
           box_inputs), an image's rows past its count all zero
"""
from dataclasses import dataclass
from pathlib import Path

from core.util.errors import UserError

GRID_HINT = ("build them from the COCO images with `features_extraction.py --grid` "
             "(see docs/data.md)")
BOXES_HINT = ("build them with `features_extraction.py --boxes detector` (or --boxes "
              "DETECTIONS.json, or --import_tsv for the precomputed bottom-up features; see "
              "docs/data.md)")


@dataclass(frozen=True)
class FeatureKind:
    """One kind of features. label: what it is, in messages; file: the h5 of a split ({split}, and
    {pca}: "_pca" or "" for the 4096-d fc7); regions: (Ni, R, D) per split instead of (Ni, D);
    missing: what to do when a folder lacks the files (None: the data folder's own hint);
    transform_file: the PCA transform of new images' features, in the data folder; sizes: the model
    config keys this kind adds; datasets: the arrays of its h5 files (`assemble` makes them what a
    decoder reads)."""

    name: str
    label: str
    file: str
    regions: bool
    missing: str
    transform_file: str
    sizes: tuple = ()
    datasets: tuple = ("features",)

    @property
    def boxes(self):
        """Whether its regions are boxes (a count per image, and a geometry) rather than a grid."""
        return "boxes" in self.datasets

    def path(self, data_dir, split, pca=True):
        """The features file of a split in data_dir."""
        return Path(data_dir) / self.file.format(split=split, pca="_pca" if pca else "")

    def model_sizes(self, features):
        """features (Ni, D), (Ni, R, D) or (Ni, K, D + 5) of the train split -> the sizes a model
        of this kind records (a box decoder reads any number of boxes)."""
        if self.boxes:
            return {"features": self.name}
        return {"features": self.name, "num_regions": int(features.shape[1])} if self.regions \
            else {}

    def transform_sizes(self, info):
        """The sizes a transform's info gives the features of new images (as model_sizes does)."""
        if self.boxes:
            return {"features": self.name}
        return {"features": self.name, "num_regions": int(info["grid_size"]) ** 2} \
            if self.regions else {}

    def feature_size(self, features):
        """The size of one image's or region's feature, without a box's geometry."""
        from core.data.boxes import GEOMETRY

        return features.shape[-1] - (GEOMETRY if self.boxes else 0)

    def describe(self, features):
        """"512-d features", "49 regions of 64-d features" or "up to 36 boxes of 128-d features",
        for what a run prints."""
        if self.boxes:
            return f"up to {features.shape[1]} boxes of {self.feature_size(features)}-d features"
        if self.regions:
            return f"{features.shape[1]} regions of {features.shape[2]}-d features"
        return f"{features.shape[1]}-d features"

    def assemble(self, arrays, path):
        """The arrays read from a split's file (`datasets`) -> what a decoder reads; UserError
        naming the file when they do not fit together."""
        if not self.boxes:
            return arrays["features"]
        from core.data.boxes import box_inputs, check_boxes

        check_boxes(arrays, path)
        return box_inputs(arrays["features"], arrays["boxes"], arrays["counts"],
                          arrays["image_sizes"])

    def transform(self, data_dir):
        """The data folder's transform of new images' features -> (transform, info); UserError
        saying how to get it when it is missing or damaged."""
        from core.data.features import ensure_transform, load_transform

        if not self.regions:
            return ensure_transform(data_dir)
        path = Path(data_dir) / self.transform_file
        if not path.is_file():
            raise UserError(f"{data_dir} has no {self.transform_file} for the {self.label} of new "
                            f"images: {self.missing}")
        return load_transform(path)

    def compute(self, paths, transform, info, device="cpu", progress=False):
        """Image files -> their features (N, D) or (N, R, D) through the dataset's VGG16 weights and
        PCA transform (the rows of unreadable files project zeros), and {index: why} for files
        that could not be read."""
        from core.data.features import extract_fc7, project, project_grid

        if self.boxes:
            from core.data.boxes import compute_box_inputs

            return compute_box_inputs(paths, transform, info, device=device, progress=progress)
        fc7, bad, *regions = extract_fc7(paths, info["vgg16"], batch_size=16, device=device,
                                         progress=progress,
                                         grid_size=info.get("grid_size") if self.regions else None)
        return (project_grid(regions[0], transform) if self.regions
                else project(fc7, transform)), bad


FEATURE_KINDS = {
    "fc7": FeatureKind("fc7", "fc7 features", "{split}2014_vgg16_fc7{pca}.h5", False, None,
                       "vgg16_fc7_pca_transform.npz"),
    "grid": FeatureKind("grid", "region features for the attention decoders",
                        "{split}2014_vgg16_grid_pca.h5", True,
                        GRID_HINT, "vgg16_grid_pca_transform.npz", sizes=("num_regions",)),
    "boxes": FeatureKind("boxes", "object regions (boxes) for the attention decoders",
                         "{split}2014_vgg16_boxes_pca.h5", True, BOXES_HINT,
                         "vgg16_boxes_pca_transform.npz",
                         datasets=("features", "boxes", "counts", "image_sizes")),
}


def feature_kind(name):
    """The row of a kind of features; ValueError for an unknown one."""
    if name not in FEATURE_KINDS:
        raise ValueError(f'unknown kind of features "{name}"; choose from '
                         f'{", ".join(FEATURE_KINDS)}')
    return FEATURE_KINDS[name]
