"""Object-region files of a dataset build (core/data/builder.py): each rank's boxes and their
features, the box PCA, and the `boxes` kind's files, from a box source or the bottom-up tsv import.

Shape letters: Ni images, K boxes (the most of an image), F a box's feature, D after PCA.
"""
import json
import shutil
from pathlib import Path

import h5py
import numpy as np

from core.data.bottom_up import import_bottom_up
from core.data.boxes import pad_boxes
from core.data.feature_kinds import BOXES, FEATURE_KINDS
from core.data.features import GRID_PCA_FIT_REGIONS, fit_pca, project, save_transform
from core.util.distributed import unshard
from core.util.errors import UserError
from core.util.fileio import file_sha256

LEARNED_DETECTOR_FILE = "bottom_up_detector.npz"  # a learned source's weights, in the dataset


def _annotations(split):
    """A split's (annotation file, image folder[, parsed content]) -> the parsed annotations."""
    source, _, *content = split
    return content[0] if content else json.loads(Path(source).read_text(encoding="utf-8"))


def annotation_ids(split):
    """Every image id a split's annotations list (the images a build dropped included) -> (n,)
    int."""
    return np.array([int(im["id"]) for im in _annotations(split)["images"]], dtype=np.int64)


def image_ids(paths, split):
    """The COCO image ids of a split's image paths (sorted by id, as read_annotations orders them)
    -> (Ni,) int: those of the annotation file's images (what a detections file names)."""
    _, image_dir, *_ = split
    ann = _annotations(split)
    by_path = {str(Path(image_dir) / str(im["file_name"])): int(im["id"]) for im in ann["images"]}
    return np.array([by_path[str(p)] for p in paths], dtype=np.int64)


def check_box_inputs(boxes, bottom_up_tsv, ids, all_ids, box_pca_dim, spec, progress=True,
                     log=print):
    """Before the first image is read: the object regions' inputs and dimensions a build will need.
    boxes: a BoxSource or None; bottom_up_tsv: its files or None; ids: {split: image ids of the
    images kept}; all_ids: every image id of the annotations -> the tsv files' scan
    (core/data/bottom_up.py: every row checked, the counts, the box PCA fitted; the import reuses
    it), or None. UserError for a detections file that is not one (every entry checked), a bad
    tsv row, an image no row gives, or a --box_pca_dim larger than a box's features or than the
    train boxes there will be."""
    from core.data.boxes import read_detections, select_boxes
    from core.data.encoders import encoder_of
    from core.data.bottom_up import FEATURE_DIM, scan_bottom_up

    encoder = encoder_of(spec)
    features = FEATURE_DIM if bottom_up_tsv else encoder.grid_channels * encoder.box_bins ** 2
    if box_pca_dim > features:
        raise UserError(f"--box_pca_dim {box_pca_dim} is larger than a box's {features} features")
    if bottom_up_tsv:
        return scan_bottom_up(bottom_up_tsv, ids, box_pca_dim, progress, log)
    if boxes is None or boxes.kind != "file":
        return None
    found = read_detections(boxes.path, all_ids, all_ids)  # every entry, checked
    train = sum(len(select_boxes(found[int(i)][1], boxes.threshold, boxes.min_boxes,
                                 boxes.max_boxes)) if int(i) in found else 1
                for i in ids["train"])
    if box_pca_dim > train:
        raise UserError(f"--box_pca_dim {box_pca_dim} needs at least {box_pca_dim} train boxes; "
                        f"{boxes.path} gives the train split's images {train}: use a smaller "
                        "--box_pca_dim")
    return None


def check_unique_ids(ids):
    """UserError when a COCO image id names images of two splits (or two images of one): a
    detections file names images by id, and would give one image's boxes to both."""
    seen = {}
    for split, split_ids in ids.items():
        for i in split_ids:
            if int(i) in seen:
                both = (f"two images of the {split} split" if seen[int(i)] == split
                        else f"images of the {seen[int(i)]} and the {split} split")
                raise UserError(f"image id {int(i)} names {both}: a detections file matches boxes "
                                "to images by COCO id, which must name one image of the dataset "
                                "(per-split ids need one detections file per split's own ids)")
            seen[int(i)] = split


def boxes_sharded(paths, ids, all_ids, source, spec, dist, side, batch_size, device, progress,
                   split):
    """This rank's share of the boxes and their features; on rank 0 -> (a list of Ni features
    (k, F) float16, a list of Ni boxes (k, 4), sizes (Ni, 2)) in the paths' order, elsewhere
    None."""
    mine, my_ids = dist.shard(paths), dist.shard(ids)
    found, sizes, _ = source.boxes(mine, my_ids, spec, device, progress, all_ids)
    features = source.features(mine, found, spec, side=side, batch_size=batch_size,
                               device=device, progress=progress, desc=f"{split} boxes")
    parts = dist.gather((features, found, sizes))
    if not dist.is_main:
        return None
    K = len(parts)  # image i was rank i % K's (i // K)-th
    return ([parts[i % K][0][i // K] for i in range(len(paths))],
            [parts[i % K][1][i // K] for i in range(len(paths))],
            unshard([p[2] for p in parts], len(paths)))


def project_boxes(regions, dim, seed=0):
    """Each split's (features list, boxes list, sizes) -> (PCA transform fitted on at most
    GRID_PCA_FIT_REGIONS train boxes, {split: (features (Ni, K, D) float16, boxes (Ni, K, 4),
    counts (Ni,), sizes (Ni, 2))})."""
    train = np.concatenate(regions["train"][0])  # (all boxes, F)
    if dim > min(len(train), train.shape[1]):
        raise UserError(f"--box_pca_dim {dim} needs at least {dim} train boxes and at most "
                        f"{train.shape[1]} (a box's features); the train split has {len(train)}")
    if len(train) > GRID_PCA_FIT_REGIONS:
        train = train[np.sort(np.random.default_rng(seed).choice(len(train), GRID_PCA_FIT_REGIONS,
                                                                 False))]
    transform = fit_pca(train.astype(np.float32), dim, progress=False)
    out = {}
    for split, (features, found, sizes) in regions.items():
        padded, padded_boxes, counts = pad_boxes([project(f, transform) for f in features], found)
        out[split] = (padded, padded_boxes, counts, sizes)
    return transform, out


def write_box_files(folder, transform, splits, box_info, info):
    """Write each split's <split>2014_vgg16_boxes_pca.h5 (features (Ni, K, D) float16, boxes
    (Ni, K, 4) float32 in image pixels, counts (Ni,) int32, image_sizes (Ni, 2) float32 width and
    height) and the box PCA transform into folder; splits: {split: (features, boxes, counts,
    sizes)}; box_info: where the boxes came from (BoxSource.info, with the side); info: the
    dataset's transform info."""
    kind = FEATURE_KINDS[BOXES]
    for split, (features, boxes, counts, sizes) in splits.items():
        with h5py.File(kind.path(folder, split), "w") as f:
            f.create_dataset("features", data=features,
                             chunks=(min(len(features), 8),) + features.shape[1:])
            f.create_dataset("boxes", data=boxes.astype(np.float32))
            f.create_dataset("counts", data=counts.astype(np.int32))
            f.create_dataset("image_sizes", data=np.asarray(sizes, dtype=np.float32))
    encoder = info.get("encoder", "vgg16")
    layer = "conv5_3 after ReLU, RoIAlign 3 x 3" if encoder == "vgg16" else "layer4, RoIAlign 1 x 1"
    if box_info.get("source") == "learned":  # the detector travels with the dataset (--image)
        shutil.copyfile(box_info["path"], Path(folder) / LEARNED_DETECTOR_FILE)
        box_info = dict(box_info, path=LEARNED_DETECTOR_FILE,
                        sha256=file_sha256(Path(folder) / LEARNED_DETECTOR_FILE))
        layer = "the bottom-up detector's box head (RoIAlign 7 x 7, two fully connected layers)"
    save_transform(Path(folder) / kind.transform_file, transform, dict(
        info, pca_dim=int(transform["components"].shape[0]), boxes=box_info,
        side=box_info.get("side"), layer=box_info.get("layer", layer)))


def import_tsv(files, ids, pca_dim, progress, log, scan, folder, info):
    """Write the boxes files of the bottom-up tsv files into folder (core/data/bottom_up.py; scan:
    their first pass, made before the build's first image, reused) and their transform, whose
    info says where they came from."""
    kind = FEATURE_KINDS[BOXES]
    transform = import_bottom_up(files, ids, folder, pca_dim, lambda s: kind.path(folder, s),
                                 progress, log, scan=scan)
    save_transform(Path(folder) / kind.transform_file, transform, dict(
        info, pca_dim=int(transform["components"].shape[0]),
        boxes={"source": "bottom-up tsv", "path": ", ".join(files)},
        layer="Faster R-CNN ResNet-101 (Visual Genome) pool5, peteanderson80/bottom-up-attention"))
