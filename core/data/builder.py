"""Build a captioning dataset in the CS231n COCO layout from images and COCO-format captions.

Input per split: an annotation file {"images": [{"id", "file_name", ...}],
"annotations": [{"image_id", "caption"}, ...]} and the folder holding the images.
Output (see core/data/coco_utils.py for the layout): coco2014_captions.h5, coco2014_vocab.json,
<split>2014_vgg16_fc7.h5, <split>2014_vgg16_fc7_pca.h5, <split>2014_urls.txt, and the
fc7 -> PCA transform (core/data/features.py); with a grid size also <split>2014_vgg16_grid_pca.h5
(regions, float16) and the region PCA transform. Everything is written to a temporary folder and
moved into place at the end as one change (the old files are put back if a move fails), so a
failure leaves the folder as it was.
"""
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np

from core.data.coco_utils import (
    OPTIONAL_SPLITS, SPECIAL_TOKENS, SPLITS, build_vocab, dataset_id, dropped_characters,
    encode_captions, tokenize)
from core.data.feature_kinds import FEATURE_KINDS
from core.util.distributed import Context, unshard
from core.util.errors import UserError
from core.data.box_files import (
    annotation_ids, boxes_sharded, check_box_inputs, check_unique_ids, image_ids, import_tsv,
    project_boxes, write_box_files)
from core.data.boxes import BOX_SIDE
from core.data.features import (
    GRID_TRANSFORM_FILE, TRANSFORM_FILE, describe_weights, encoder_of,
    extract_fc7, fit_grid_pca, fit_pca, project, project_grid, save_transform)
from core.util.fileio import describe_os_error
from core.data.annotations import read_annotations, url_of

PCA_CHUNK_BYTES = 2 << 30  # fit IncrementalPCA in chunks when train fc7 is larger than this


def build_dataset(splits, out_dir, spec, *, batch_size=32, device="cpu", num_workers=0,
                  min_word_count=5, max_length=17, pca_dim=512, grid_size=None, grid_pca_dim=64,
                  boxes=None, box_pca_dim=128, box_side=BOX_SIDE, bottom_up_tsv=None,
                  skip_bad_images=False, progress=True, log=print, dist=None):
    """splits: {"train": (annotation_file, image_dir), "val": (...), optionally "test": (...)}; an
    entry may also be (name, image_dir, parsed annotations) -> dict of counts (None on ranks > 0).

    spec: the encoder's weights spec from core.data.features.parse_weights (VGG16 unless it names
    another). pca_dim 0: no PCA (the *_pca.h5 files hold the encoder's vectors, an identity
    transform beside them). dist: a core.util.distributed.Context; with K processes each runs
    VGG16 on every K-th image and rank 0
    gathers the fc7 rows in the original order, fits the PCA and writes the dataset. grid_size (7 or
    14): also write the region features, each region's 512 channels reduced to grid_pca_dim by a PCA
    fitted on train regions. boxes (a core.data.boxes.BoxSource): also write the object regions,
    each box's feature (core/data/boxes.py, images scaled to a longer side of box_side) reduced to
    box_pca_dim by a PCA fitted on the train boxes. bottom_up_tsv (a list of files): the object
    regions from the precomputed bottom-up features instead (core/data/bottom_up.py; box_pca_dim 0:
    their 2048-d features as they are).
    """
    dist = dist or Context()
    if not set(SPLITS) <= set(splits) <= set(SPLITS + OPTIONAL_SPLITS):
        raise ValueError(f"splits must be {SPLITS}, optionally with {OPTIONAL_SPLITS}")
    names = [s for s in SPLITS + OPTIONAL_SPLITS if s in splits]
    out_dir = Path(out_dir)
    log(f"image features: {describe_weights(spec)}")
    paths, raw_captions, image_idxs = _read_splits(splits, names, skip_bad_images, min_word_count,
                                                   pca_dim, spec, log)
    fc7, grid, regions = {}, {}, {}
    ids, all_ids, scan = None, None, None
    if boxes is not None or bottom_up_tsv:  # every input and dimension, before the first image
        ids, all_ids, scan = _check_box_inputs(splits, names, paths, boxes, bottom_up_tsv,
                                               box_pca_dim, spec, dist, progress, log)
    for split in names:
        fc7[split], bad, grid[split] = _extract_sharded(
            paths[split], spec, dist, batch_size=batch_size, device=device, num_workers=num_workers,
            progress=progress, desc=f"{split} fc7" + (" + grid" if grid_size else ""),
            grid_size=grid_size)
        if boxes is not None:
            regions[split] = boxes_sharded(paths[split], ids[split], all_ids, boxes, spec, dist,
                                           box_side, batch_size, device, progress, split)
        if dist.is_main and bad:
            keep, new_index = _readable(bad, split, paths[split], skip_bad_images, log)
            rows = new_index[image_idxs[split]] >= 0  # the captions of the images kept
            paths[split], fc7[split] = paths[split][keep], fc7[split][keep]
            if grid_size:
                grid[split] = grid[split][keep]
            if boxes is not None:
                regions[split] = [[part[k] for k in keep] if isinstance(part, list) else part[keep]
                                  for part in regions[split]]
            raw_captions[split] = [c for c, r in zip(raw_captions[split], rows) if r]
            image_idxs[split] = new_index[image_idxs[split][rows]].astype(np.int32)
    if not dist.is_main:
        return None
    tokens = _tokens(raw_captions, log)
    idx_to_word = build_vocab(tokens["train"], min_word_count)
    word_to_idx = {w: i for i, w in enumerate(idx_to_word)}
    transform, pca, grids = _fit_projections(fc7, grid if grid_size else None, grid_size,
                                             grid_pca_dim, pca_dim, spec, progress)
    del grid
    if boxes is not None:
        regions = project_boxes(regions, box_pca_dim) + (dict(boxes.info(), side=box_side),)
    elif bottom_up_tsv:  # written into the build's folder, row by row
        ids = {split: image_ids(paths[split], splits[split]) for split in names}  # images kept
        regions = functools.partial(import_tsv, bottom_up_tsv, ids, box_pca_dim, progress, log,
                                    scan)
    try:
        removed = _write_dataset(out_dir, tokens, word_to_idx, idx_to_word, image_idxs, paths, fc7,
                                 pca, transform, spec, max_length, pca_dim, grids,
                                 regions if boxes is not None or bottom_up_tsv else None)
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise UserError(f"cannot write the dataset into {out_dir}: {describe_os_error(e)}{where}; "
                        "nothing was changed there") from None
    counts = {f"{s}_{k}": len(v[s])
              for s in names for k, v in (("images", paths), ("captions", raw_captions))}
    log(f"wrote {out_dir}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items())
        + f", {len(idx_to_word)} words")
    if removed:
        log(f"removed the older build's {', '.join(removed)} (this build does not write them)")
    return counts


def _check_box_inputs(splits, names, paths, boxes, bottom_up_tsv, box_pca_dim, spec, dist,
                      progress, log):
    """-> each split's image ids ({split: (Ni,)}, what a detections file names), every id of the
    annotations (the images --skip_bad_images dropped included) and the tsv files' scan (or None),
    each input checked by rank 0 (core/data/box_files.py: check_box_inputs), every rank agreeing."""
    ids = {split: image_ids(paths[split], splits[split]) for split in names}
    all_ids = np.concatenate([annotation_ids(splits[split]) for split in names])
    if boxes is not None and boxes.kind == "file":
        check_unique_ids(ids)
    scan = dist.agreed(lambda: check_box_inputs(boxes, bottom_up_tsv, ids, all_ids, box_pca_dim,
                                                spec, progress, log) if dist.is_main else None)
    return ids, all_ids, scan


def _read_splits(splits, names, skip_bad_images, min_word_count, pca_dim, spec, log):
    """Each split's annotations -> ({split: image paths}, {split: captions}, {split: image_idxs});
    UserError, before any image is read, for a split without images, captions that leave no word
    for the vocabulary, or a PCA larger than the train split or the encoder's vector."""
    paths, raw_captions, image_idxs = {}, {}, {}
    for split in names:
        source, image_dir, *content = splits[split]
        paths[split], raw_captions[split], image_idxs[split] = read_annotations(
            source, image_dir, skip_bad_images, log, content=content[0] if content else None)
        if len(paths[split]) == 0:
            raise UserError(f"the {split} split has no images with captions")
    if len(build_vocab([tokenize(c) for c in raw_captions["train"]],
                       min_word_count)) == len(SPECIAL_TOKENS):
        raise UserError(f"no word of the train captions occurs {min_word_count} times "
                        f"(--min_word_count), so every "
                        "caption would be <UNK>: use a smaller --min_word_count")
    F = encoder_of(spec).pooled_dim
    if pca_dim > min(len(paths["train"]), F):
        raise UserError(f"--pca_dim {pca_dim} needs at least {pca_dim} training images (and at "
                        f"most {F}); the train split has {len(paths['train'])}: use a "
                        f"smaller --pca_dim or more images")
    return paths, raw_captions, image_idxs


def _readable(bad, split, paths, skip_bad_images, log):
    """{index: why} of a split's unreadable images -> (the image rows kept, each old image row's
    new one or -1); UserError unless skip_bad_images."""
    first = min(bad)
    if not skip_bad_images:
        raise UserError(f"cannot read image {paths[first]} ({bad[first]})"
                        + (f" and {len(bad) - 1} more" if len(bad) > 1 else ""))
    log(f"skipping {len(bad)} unreadable {split} images, e.g. {paths[first]} ({bad[first]})")
    keep = np.setdiff1d(np.arange(len(paths)), sorted(bad))
    new_index = np.full(len(paths), -1)
    new_index[keep] = np.arange(len(keep))
    return keep, new_index


def _tokens(raw_captions, log):
    """Each split's captions -> their tokens, saying how many characters the tokenizer dropped."""
    tokens = {split: [tokenize(c) for c in captions] for split, captions in raw_captions.items()}
    for split, captions in raw_captions.items():
        dropped = sum(dropped_characters(c, t) for c, t in zip(captions, tokens[split]))
        if dropped:
            log(f"{split}: {dropped} punctuation/symbol characters dropped from the captions by "
                f"the tokenizer")
    return tokens


def _fit_projections(fc7, grid, grid_size, grid_pca_dim, pca_dim, spec, progress):
    """The PCA of the train vectors (the identity with pca_dim 0: the encoder's own vectors) and,
    with a grid, of the train regions' channels -> (transform, {split: projected (Ni, pca_dim)},
    (grid transform, {split: projected regions}, grid_size) or None)."""
    F = encoder_of(spec).pooled_dim
    chunk = 20000 if fc7["train"].nbytes > PCA_CHUNK_BYTES else None
    if pca_dim:
        transform = fit_pca(fc7["train"], pca_dim, chunk_rows=chunk, progress=progress)
    else:
        transform = {"mean": np.zeros(F, np.float32), "components": np.eye(F, dtype=np.float32),
                     "bias": np.zeros(F, np.float32)}
    pca = {split: project(vectors, transform) for split, vectors in fc7.items()}
    if not grid_size:
        return transform, pca, None
    grid_transform = fit_grid_pca(grid["train"], grid_pca_dim)
    return transform, pca, (grid_transform, {split: project_grid(regions, grid_transform)
                                             for split, regions in grid.items()}, grid_size)


def _extract_sharded(paths, spec, dist, grid_size=None, **kwargs):
    """extract_fc7 over this rank's share of the paths; on rank 0 -> fc7 (N, 4096) of all paths in
    order, {index: error} of all unreadable ones and the regions (N, R, 512) float16 (None without
    grid_size), elsewhere (None, None, None)."""
    fc7, bad, *grid = extract_fc7(dist.shard(paths), spec, grid_size=grid_size, **kwargs)
    parts = dist.gather((fc7, bad, grid[0] if grid else None))
    if not dist.is_main:
        return None, None, None
    K = dist.world_size
    bad = {r + K * i: e for r, (_, b, _) in enumerate(parts) for i, e in b.items()}
    regions = unshard([g for _, _, g in parts], len(paths)) if grid_size else None
    return unshard([f for f, _, _ in parts], len(paths)), bad, regions


def _write_dataset(out_dir, tokens, word_to_idx, idx_to_word, image_idxs, paths, fc7, pca,
                   transform, spec, max_length, pca_dim, grids=None, regions=None):
    """Write every file of the layout into a temporary folder inside out_dir, then move them into
    place -> the names of an older build's files removed without a replacement."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".build_{os.getpid()}_", dir=out_dir))
    try:
        with h5py.File(tmp / "coco2014_captions.h5", "w") as f:
            for split in tokens:
                f.create_dataset(f"{split}_captions",
                                 data=encode_captions(tokens[split], word_to_idx, max_length),
                                 compression="gzip")
                f.create_dataset(f"{split}_image_idxs", data=image_idxs[split], compression="gzip")
        for split in tokens:
            for name, array in ((f"{split}2014_vgg16_fc7.h5", fc7[split]),
                                (f"{split}2014_vgg16_fc7_pca.h5", pca[split])):
                with h5py.File(tmp / name, "w") as f:
                    f.create_dataset("features", data=array)
            urls = "".join(url_of(p, out_dir) + "\n" for p in paths[split])
            (tmp / f"{split}2014_urls.txt").write_text(urls,
                                                    encoding="utf-8")
        (tmp / "coco2014_vocab.json").write_text(json.dumps({"idx_to_word": idx_to_word,
                                                             "word_to_idx": word_to_idx}))
        info = {"vgg16": spec, "encoder": encoder_of(spec).name, "pca_dim": pca_dim,
                "fitted_on": "train",
                "dataset_id": dataset_id(pca["train"], idx_to_word),
                "preprocessing": "resize 256, center crop 224, ImageNet mean/std",
                "layer": ("fc7 after ReLU" if encoder_of(spec).name == "vgg16"
                          else "layer4, mean over its cells")}
        save_transform(tmp / TRANSFORM_FILE, transform, info)
        if grids:
            grid_transform, grid_pca, grid_size = grids
            for split, array in grid_pca.items():
                with h5py.File(tmp / f"{split}2014_vgg16_grid_pca.h5", "w") as f:
                    f.create_dataset("features", data=array, chunks=(min(len(array), 256),)
                                     + array.shape[1:])
            layer = (("pool5" if grid_size == 7 else "conv5_3 after ReLU")
                     if encoder_of(spec).name == "vgg16" else f"layer4, {grid_size} x {grid_size}")
            save_transform(tmp / GRID_TRANSFORM_FILE, grid_transform, dict(
                info, pca_dim=int(grid_transform["components"].shape[0]), grid_size=grid_size,
                layer=layer))
        if callable(regions):  # imported
            regions(tmp, info)
        elif regions:
            write_box_files(tmp, *regions, info)
        return _replace_all(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_builds(out_dir):
    """Remove the temporary .build_<pid>_* folders that builds killed part-way left in out_dir
    (those whose process no longer runs; up to a few GB at COCO size) -> their names."""
    removed = []
    for folder in Path(out_dir).glob(".build_*"):
        # .build_<pid>_<random>
        pid = folder.name.split("_")[1] if folder.name.count("_") >= 2 else ""
        if pid.isdigit() and _running(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    return removed


def _running(pid):
    """Whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def layout_files():
    """Every file name a build may write into a dataset folder (a split's files for train, val and
    the optional test split, each kind of features, both transforms): a rebuild replaces or
    removes all of them, so no file of an older build is read with the new one."""
    names = {"coco2014_captions.h5", "coco2014_vocab.json"}
    for kind in FEATURE_KINDS.values():
        names.add(kind.transform_file)
        for split in SPLITS + OPTIONAL_SPLITS:
            names.update(kind.path("", split, pca).name for pca in (True, False))
    names.update(f"{split}2014_urls.txt" for split in SPLITS + OPTIONAL_SPLITS)
    return names


def _replace_all(new_dir, out_dir):
    """Move every file of new_dir into out_dir as one change: the files of the layout already there
    (those it replaces, and those of an older build it does not write again, such as region files
    of a build with --grid, or a test split) are set aside first, and a failure part-way puts them
    back (and takes the new ones out), so out_dir holds either the whole old dataset or the whole
    new one, never a mix. -> the names of the old files removed without a replacement."""
    new = sorted(f.name for f in new_dir.iterdir())
    old_dir = new_dir / ".previous"
    old_dir.mkdir()
    set_aside, placed = [], []
    try:
        for name in sorted(set(new) | layout_files()):
            if (out_dir / name).exists():
                os.replace(out_dir / name, old_dir / name)
                set_aside.append(name)
        for name in new:
            os.replace(new_dir / name, out_dir / name)
            placed.append(name)
    except BaseException:
        for name in placed:
            os.replace(out_dir / name, new_dir / name)
        for name in set_aside:
            os.replace(old_dir / name, out_dir / name)
        raise
    return sorted(set(set_aside) - set(new))
