"""Importing the standard precomputed bottom-up features (peteanderson80/bottom-up-attention's tsv
files: a Faster R-CNN ResNet-101 trained on Visual Genome, 36 fixed or 10-100 adaptive boxes of
2048-d per COCO image) into the boxes layout (core/data/feature_kinds.py), so that a COCO user
trains on the field's standard inputs without running a detector.

A tsv row, tab-separated, no header: image_id, image_w, image_h, num_boxes, boxes, features; boxes
and features base64 of float32 arrays (num_boxes, 4) (x0, y0, x1, y1 in the image's pixels) and
(num_boxes, 2048). Rows are matched to the dataset's images by COCO image id; rows of other images
are skipped (the files cover train2014 and val2014 together).

Full COCO is 123,287 images x 36 boxes x 2048 float16 = 18 GB, so nothing is held whole: one pass
counts each image's boxes and keeps a sample of train boxes for the PCA, a second projects each
row and writes it into its place in the h5 files (chunked by image).

Shape letters: Ni images of a split, K most boxes of an image, F = 2048, D after PCA (F without).
"""
import base64
import csv
import gzip
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from core.util.errors import UserError

FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
FEATURE_DIM = 2048
PCA_FIT_BOXES = 200_000  # the PCA is fitted on at most this many train boxes, drawn evenly


def read_rows(paths):
    """Every row of the tsv files (gzip-compressed ones read as such) -> yields (file, line number,
    dict of FIELDS as str)."""
    csv.field_size_limit(sys.maxsize)
    for path in paths:
        try:
            with open(path, "rb") as raw:
                compressed = raw.read(2) == b"\x1f\x8b"  # gzip's magic bytes
            opener = gzip.open if compressed else open
            with opener(path, "rt", newline="", encoding="ascii") as f:
                for n, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
                    if len(row) != len(FIELDS):
                        raise UserError(f"{path}, line {n}: {len(row)} fields, not the "
                                        f"{len(FIELDS)} of a bottom-up tsv row "
                                        f"({', '.join(FIELDS)})")
                    yield path, n, dict(zip(FIELDS, row))
        except (OSError, UnicodeDecodeError, EOFError) as e:
            what = "compressed (gzip) " if compressed else ""
            raise UserError(f"cannot read the {what}bottom-up features {path} ({e})") from None


def parse_row(path, n, row):
    """A row -> (image id, width, height, boxes (k, 4) float32, features (k, 2048) float32);
    UserError naming the file and line for a field that is not a number, byte counts that do not
    match num_boxes, or boxes that are not finite with x0 < x1, y0 < y1."""
    where = f"{path}, line {n} (image {row['image_id']})"
    try:
        image_id, width, height = int(row["image_id"]), int(row["image_w"]), int(row["image_h"])
        k = int(row["num_boxes"])
        raw = {name: base64.b64decode(row[name], validate=True) for name in ("boxes", "features")}
    except ValueError as e:  # a field that is not a number, or not base64
        raise UserError(f"{where}: {type(e).__name__}: {e}") from None
    if k < 1 or width < 1 or height < 1:
        raise UserError(f"{where}: num_boxes {k}, image_w {width}, image_h {height} must be "
                        "positive")
    for name, per_box in (("boxes", 4), ("features", FEATURE_DIM)):
        if len(raw[name]) != k * per_box * 4:
            raise UserError(f"{where}: {name} holds {len(raw[name])} bytes, num_boxes {k} needs "
                            f"{k * per_box * 4} ({k} x {per_box} float32)")
    boxes = np.frombuffer(raw["boxes"], dtype=np.float32).reshape(k, 4)
    features = np.frombuffer(raw["features"], dtype=np.float32).reshape(k, FEATURE_DIM)
    if not (np.isfinite(boxes).all() and (boxes[:, 2] > boxes[:, 0]).all()
            and (boxes[:, 3] > boxes[:, 1]).all() and np.isfinite(features).all()):
        raise UserError(f"{where}: boxes need finite corners x0 < x1, y0 < y1 and finite "
                        "features")
    return image_id, width, height, boxes, features


def _image_id(path, n, row):
    """A row's image id; UserError naming the row when it is not a whole number."""
    try:
        return int(row["image_id"])
    except ValueError:
        raise UserError(f"{path}, line {n}: image_id {row['image_id']!r} is not a COCO image id") \
            from None


@dataclass
class Scan:
    """What the first pass over the tsv files found: ids {split: (Ni,) image ids}, where {id:
    (split, row)}, counts {split: (Ni,) boxes}, sizes {split: (Ni, 2)}, and the PCA transform of
    the train boxes (the identity without PCA)."""

    ids: dict
    where: dict
    counts: dict
    sizes: dict
    transform: dict


def scan_bottom_up(paths, ids, pca_dim, progress=True, log=print):
    """The first pass over the tsv files -> Scan: every row checked, each image's box count and
    size, a sample of the train boxes for the PCA, fitted (pca_dim 0: none, the identity).
    UserError for a bad row (naming it), an image of the dataset that no row gives, or an image
    given twice, or a PCA larger than the train boxes; rows of images the dataset does not have
    (the files cover all of train2014 and val2014, a dataset may hold fewer) are skipped and
    counted in one line."""
    where = {}
    for split, split_ids in ids.items():
        for r, i in enumerate(split_ids):
            if int(i) in where:
                both = (f"names two images of the {split} split" if where[int(i)][0] == split
                        else f"is in the {where[int(i)][0]} and the {split} splits")
                raise UserError(f"image id {int(i)} {both}: the bottom-up rows are matched to "
                                "images by COCO id, which must be unique")
            where[int(i)] = (split, r)
    counts = {split: np.zeros(len(split_ids), np.int32) for split, split_ids in ids.items()}
    sizes = {split: np.zeros((len(split_ids), 2), np.float32) for split, split_ids in ids.items()}
    sample, seen, others = [], {}, []
    # every stride-th box of a train image (36 a image assumed) is kept for the PCA
    stride = max(1, -(-len(ids.get("train", ())) * 36 // PCA_FIT_BOXES))
    for path, n, row in tqdm(read_rows(paths), desc="bottom-up rows (1 of 2)", unit="row",
                             disable=not progress):
        image_id = _image_id(path, n, row)
        if image_id not in where:
            others.append(f"{path}, line {n} (image {image_id})")
            continue
        if image_id in seen:
            raise UserError(f"{path}, line {n}: image {image_id} again (first at "
                            f"{seen[image_id]}): one row per image")
        seen[image_id] = f"{path}, line {n}"
        _, width, height, boxes, features = parse_row(path, n, row)
        split, r = where[image_id]
        counts[split][r], sizes[split][r] = len(boxes), (width, height)
        if split == "train":
            sample.append(features[r % stride::stride])
    if others:
        log(f"skipped {len(others)} bottom-up row(s) of images this dataset does not have, e.g. "
            f"{others[0]}")
    missing = [i for i in where if i not in seen]
    if missing:
        raise UserError(f"no bottom-up row for image {missing[0]} of the {where[missing[0]][0]} "
                        f"split" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                        + f" in {', '.join(map(str, paths))}")
    return Scan(ids, where, counts, sizes, _fit(sample, pca_dim))


def import_bottom_up(paths, ids, folder, pca_dim, file_of, progress=True, log=print, scan=None):
    """Write the boxes files of every split from the tsv files -> the transform dict.

    paths: the tsv files; ids: {split: (Ni,) COCO image ids of the split's feature rows};
    folder: where to write; pca_dim: PCA dimensions (0: the 2048-d features as they are);
    file_of: split -> the h5 path in folder; scan: a scan_bottom_up of these files made before
    (reused when it is of the same ids, else the files are scanned again). UserErrors as
    scan_bottom_up's, and for a write that fails.
    """
    same = scan is not None and set(scan.ids) == set(ids) and all(
        np.array_equal(scan.ids[s], ids[s]) for s in ids)
    scan = scan if same else scan_bottom_up(paths, ids, pca_dim, progress, log)
    where, counts, transform = scan.where, scan.counts, scan.transform
    from core.data.features import project

    reduce = (lambda f: project(f, transform)) if pca_dim else (lambda f: f)  # 0: as they are
    files, D = {}, transform["components"].shape[0]
    try:
        for split in ids:
            K = int(counts[split].max())
            f = h5py.File(file_of(split), "w")
            files[split] = f
            f.create_dataset("features", (len(ids[split]), K, D), dtype=np.float16,
                             chunks=(min(len(ids[split]), 8), K, D), fillvalue=0)
            f.create_dataset("boxes", (len(ids[split]), K, 4), dtype=np.float32, fillvalue=0)
            f.create_dataset("counts", data=counts[split])
            f.create_dataset("image_sizes", data=scan.sizes[split])
        for path, n, row in tqdm(read_rows(paths), desc="bottom-up rows (2 of 2)", unit="row",
                                 disable=not progress):
            image_id = _image_id(path, n, row)
            if image_id not in where:
                continue
            _, _, _, boxes, features = parse_row(path, n, row)
            split, r = where[image_id]
            files[split]["features"][r, :len(boxes)] = reduce(features)
            files[split]["boxes"][r, :len(boxes)] = boxes
    except RuntimeError as e:  # h5py's failed writes (a full disk) come as RuntimeError too
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot write the object regions into {folder} ({first}): is the disk "
                        "full?") from None
    finally:
        for f in files.values():
            try:
                f.close()
            except (OSError, RuntimeError):
                pass  # a file that could not be written whole is removed with the build
    return transform


def _fit(sample, dim):
    """The PCA of the sampled train boxes' features (the identity when dim is 0)."""
    if not dim:
        return {"mean": np.zeros(FEATURE_DIM, np.float32),
                "components": np.eye(FEATURE_DIM, dtype=np.float32),
                "bias": np.zeros(FEATURE_DIM, np.float32)}
    from core.data.features import fit_pca

    boxes = np.concatenate(sample) if sample else np.zeros((0, FEATURE_DIM))
    if dim > len(boxes):
        raise UserError(f"--box_pca_dim {dim} needs at least {dim} train boxes; the bottom-up rows "
                        f"of the train split give {len(boxes)} (for the PCA): use a smaller "
                        "--box_pca_dim, or 0 for the 2048-d features as they are")
    return fit_pca(boxes, dim, progress=False)


def tsv_source(paths):
    """The files of --bottom_up_tsv -> their paths; UserError for one that does not exist."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise UserError(f"--bottom_up_tsv {missing[0]}: no such file")
    return [str(p) for p in paths]
