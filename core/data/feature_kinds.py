"""The one table of the kinds of image features a decoder reads: a kind is one row here that knows
its files, its shape, how to check them, what it adds to a model's sizes, where its regions lie in
an image, and how to compute it for new images (`inference.py --image`); the scripts, the registry,
the loader and the figures read it instead of branching, and no decoder names a kind.

Shape letters: Ni images, D feature size, R regions per image, K boxes (the most of an image).

    fc7    one 512-d PCA vector of VGG16's fc7 per image: (Ni, D) (the CS231n layout)
    grid   a g x g grid of VGG16 pool5 / conv5_3 regions, each PCA-reduced: Regions (Ni, R, D)
           whose place is their cell (place "cells": a model learns an embedding of each)
    boxes  the objects of an image, each a PCA-reduced feature pooled over its box: Regions
           (Ni, K, D) with the boxes' geometry (Ni, K, 5) and the mask of an image's own boxes
           (place "geometry": a model projects the geometry); core/data/regions.py

A region decoder reads every kind whose row has a place, and builds the weights that place needs
(PLACES of core/model/region_decoder.py and core/model/region_transformer.py); a new kind of
regions is a row here and the machinery that makes its files.
"""
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.regions import Regions, box_regions, check_boxes, geometry_boxes, region_boxes
from core.util.errors import UserError

FC7, GRID, BOXES = "fc7", "grid", "boxes"  # the names of the rows, for the tables that name one

GRID_HINT = ("build them from the COCO images with `features_extraction.py --grid` "
             "(see docs/data.md)")
BOXES_HINT = ("build them with `features_extraction.py --boxes detector` (or --boxes "
              "DETECTIONS.json, or --bottom_up_tsv FILES for the precomputed bottom-up features; see "
              "docs/data.md)")


@dataclass(frozen=True)
class FeatureKind:
    """One kind of features. label: what it is, in messages; file: the h5 of a split ({split}, and
    {pca}: "_pca" or "" for the 4096-d fc7); place: how a region's place enters a decoder, "cells"
    (a grid's R cells, R fixed: the model size num_regions) or "geometry" (each region's box, any
    number per image, masked), None for one vector per image; missing: what to do when a folder
    lacks the files (None: the data folder's own hint); transform_file: the PCA transform of new
    images' features, in the data folder; datasets: the arrays of its h5 files (`assemble` makes
    them what a decoder reads)."""

    name: str
    label: str
    file: str
    place: object
    missing: object
    transform_file: str
    datasets: tuple = ("features",)

    @property
    def regions(self):
        """Whether it gives regions (Regions) rather than one vector per image (N, D)."""
        return self.place is not None

    @property
    def counted(self):
        """Whether its images have their own numbers of regions (boxes) rather than one R."""
        return self.place == "geometry"

    @property
    def sizes(self):
        """The model config keys this kind adds."""
        return ("num_regions",) if self.place == "cells" else ()

    def path(self, data_dir, split, pca=True):
        """The features file of a split in data_dir."""
        return Path(data_dir) / self.file.format(split=split, pca="_pca" if pca else "")

    def model_sizes(self, features):
        """features (Ni, D) or Regions of the train split -> the sizes a model of this kind
        records."""
        return self._sizes(features.shape[1] if self.place == "cells" else None)

    def transform_sizes(self, info):
        """The sizes a transform's info gives the features of new images (as model_sizes does)."""
        return self._sizes(int(info["grid_size"]) ** 2 if self.place == "cells" else None)

    def _sizes(self, num_regions):
        if not self.regions:
            return {}
        return {"features": self.name, **({} if num_regions is None
                                          else {"num_regions": int(num_regions)})}

    @staticmethod
    def feature_size(features):
        """The size D of one image's or region's feature."""
        return int(features.shape[-1])

    def describe(self, features):
        """"512-d features", "49 regions of 64-d features" or "up to 36 boxes of 128-d features",
        for what a run prints."""
        if self.counted:
            return f"up to {features.shape[1]} boxes of {features.shape[2]}-d features"
        if self.regions:
            return f"{features.shape[1]} regions of {features.shape[2]}-d features"
        return f"{features.shape[1]}-d features"

    def check_arrays(self, arrays, path):
        """UserError naming the file when the arrays of a split's file (`datasets`; features may be
        the h5 dataset, read only for its shape) do not fit together."""
        if self.counted:
            check_boxes(arrays, path)

    def assemble(self, arrays, path):
        """The arrays read from a split's file (`datasets`) -> what a decoder reads: (Ni, D) or
        Regions; UserError naming the file when they do not fit together."""
        if not self.regions:
            return arrays["features"]
        self.check_arrays(arrays, path)
        if self.counted:
            return box_regions(arrays["features"], arrays["boxes"], arrays["counts"],
                               arrays["image_sizes"])
        return Regions(arrays["features"])

    def drawn_regions(self, regions, width, height):
        """One image's Regions (R, D) -> where its own regions lie in an image of that width and
        height, boxes (R', 4) pixels, which of its R regions they are (R,) bool, and whether to
        draw them as a heat map over cells (else box by box)."""
        if self.counted:
            own = regions.own()
            return geometry_boxes(regions.geometry[own], width, height), own, False
        side = int(round(np.sqrt(len(regions.features))))
        return region_boxes(side, height, width), regions.own(), True

    def regions_identity(self, data_dir=None, transform=None, info=None):
        """What a checkpoint over this kind's regions records of them, to refuse other regions
        of the same size (a dataset rebuilt with other boxes) -> {"regions_id": a digest of the
        regions' PCA, "regions_source": where the boxes came from}, or {} for fc7 and a folder
        without the transform. From data_dir's transform file, or a loaded transform and info."""
        if not self.regions:
            return {}
        if transform is None:
            path = Path(data_dir) / self.transform_file
            if not path.is_file():
                return {}
            from core.data.features import load_transform

            transform, info = load_transform(path)
        digest = hashlib.sha256(np.ascontiguousarray(transform["components"]).tobytes())
        return {"regions_id": digest.hexdigest()[:16],
                "regions_source": (info or {}).get("boxes", {}).get("source")}

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
        transform, info = load_transform(path)
        return transform, dict(info, data_dir=str(data_dir))  # where its other files lie

    def compute(self, paths, transform, info, device="cpu", progress=False):
        """Image files -> their features (N, D) or Regions through the dataset's VGG16 weights and
        PCA transform (the rows of unreadable files project zeros), and {index: why} for files
        that could not be read."""
        from core.data.box_sources import compute_box_regions
        from core.data.features import extract_fc7, project, project_grid

        if self.counted:
            return compute_box_regions(paths, transform, info, device=device, progress=progress)
        fc7, bad, *grid = extract_fc7(paths, info["vgg16"], batch_size=16, device=device,
                                      progress=progress,
                                      grid_size=info.get("grid_size") if self.regions else None)
        return (Regions(project_grid(grid[0], transform)) if self.regions
                else project(fc7, transform)), bad


FEATURE_KINDS = {
    FC7: FeatureKind(FC7, "fc7 features", "{split}2014_vgg16_fc7{pca}.h5", None, None,
                     "vgg16_fc7_pca_transform.npz"),
    GRID: FeatureKind(GRID, "region features for the attention decoders",
                      "{split}2014_vgg16_grid_pca.h5", "cells", GRID_HINT,
                      "vgg16_grid_pca_transform.npz"),
    BOXES: FeatureKind(BOXES, "object regions (boxes) for the attention decoders",
                       "{split}2014_vgg16_boxes_pca.h5", "geometry", BOXES_HINT,
                       "vgg16_boxes_pca_transform.npz",
                       datasets=("features", "boxes", "counts", "image_sizes")),
}
REGION_KINDS = tuple(name for name, kind in FEATURE_KINDS.items() if kind.regions)


def feature_kind(name):
    """The row of a kind of features; ValueError for an unknown one."""
    if name not in FEATURE_KINDS:
        raise ValueError(f'unknown kind of features "{name}"; choose from '
                         f'{", ".join(FEATURE_KINDS)}')
    return FEATURE_KINDS[name]
