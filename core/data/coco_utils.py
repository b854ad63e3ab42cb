"""Reading captioning data in the CS231n COCO layout.

A data directory holds:
  coco2014_captions.h5         train_captions (Nc, L) int32, train_image_idxs (Nc,) int32, val_*
  alike train2014_vgg16_fc7[_pca].h5 features (Ni, 4096) or (Ni, 512) float32, one row per image
  val2014_vgg16_fc7[_pca].h5
  coco2014_vocab.json          {"idx_to_word": [...], "word_to_idx": {...}}
  train2014_urls.txt           one image URL (or path) per line, in feature row order
  val2014_urls.txt
  train2014_vgg16_grid_pca.h5  optional region features (Ni, R, G) float16 of the attention decoders
  val2014_vgg16_grid_pca.h5    (features_extraction.py --grid; the CS231n download has none)
Captions start with <START>, end with <END> and are padded with <NULL>. A test split (test_* in
the captions file, test2014_* files) is optional: the CS231n download has none, the bundled sample
dataset and datasets built with a test split (features_extraction.py --split_file) have one. Val
chooses the best checkpoint; test is scored only by `inference.py --eval`.
"""
import os
import json
from pathlib import Path

import h5py
import numpy as np

from core.data.vocab import (  # noqa: F401  (the CS231n names, importable here)
    SPECIAL_TOKENS, build_vocab, dataset_id, decode_captions, dropped_characters, encode_captions,
    index_vocabulary, load_vocab, require_file, tokenize)
from core.data.feature_kinds import (  # noqa: F401 (GRID_HINT)
    FC7, FEATURE_KINDS, GRID_HINT, feature_kind)
from core.data.regions import Regions  # noqa: F401  (what region features load as)
from core.util.errors import UserError

DATASETS_DIR = Path(__file__).resolve().parents[1] / "datasets"
COCO_DIR = DATASETS_DIR / "coco_captioning"
SAMPLE_DIR = DATASETS_DIR / "sample_captioning"
FETCH_HINT = "cd core/datasets && bash get_datasets.sh"
SPLITS = ("train", "val")  # every dataset has them
OPTIONAL_SPLITS = ("test",)


def default_data_dir(log=print):
    """The downloaded COCO data when present, otherwise the bundled sample dataset (said in one
    line)."""
    if (COCO_DIR / "coco2014_captions.h5").is_file():
        return COCO_DIR
    log(f"no COCO data in {COCO_DIR.relative_to(DATASETS_DIR.parent.parent)} (fetch it with "
        f"`{FETCH_HINT}`): using the bundled sample dataset "
        f"{SAMPLE_DIR.relative_to(DATASETS_DIR.parent.parent)}")
    return SAMPLE_DIR


def _read_h5(path, names, rows=None):
    """Read datasets `names` (their first `rows` rows when given) from one h5 file -> dict name ->
    array; UserError when unreadable, when a name is a group rather than an array, or when an
    array is larger than this machine's memory (a damaged or crafted header)."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with h5py.File(path, "r") as f:
            missing = [n for n in names if n not in f]
            if missing:
                raise UserError(f"{path} has no dataset(s) {', '.join(missing)}")
            for n in names:
                if not isinstance(f[n], h5py.Dataset):
                    raise UserError(f"{path}: {n} is an HDF5 {type(f[n]).__name__.lower()}, not an "
                                    "array: rebuild the file")
                size = f[n].nbytes if rows is None or not f[n].shape else \
                    f[n].nbytes // max(f[n].shape[0], 1) * min(rows, f[n].shape[0])
                if size > memory:
                    raise UserError(f"{path}: {n} of shape {f[n].shape} would take "
                                    f"{size / 2**30:,.0f} GiB, more than this machine's "
                                    f"{memory / 2**30:,.0f} GiB: a damaged file, or data too large "
                                    "to load whole")
                check_stored(f[n], path)
            return {n: f[n][()] if rows is None else f[n][:rows] for n in names}
    except OSError as e:
        if "truncated file" in str(e):
            raise UserError(f"{path} is cut short, an unfinished copy or download ({e}): copy or "
                            "rebuild it again") from None
        raise UserError(f"cannot read {path} as HDF5 ({e})") from None




def load_coco_data(base_dir=COCO_DIR, max_train=None, pca_features=True, seed=0, features=FC7,
                   lazy=None):
    """Load a captioning dataset into memory.

    base_dir: data directory; max_train: keep a random subset of that many training
    captions, drawn without replacement with `seed`; pca_features: 512-d PCA features
    instead of the 4096-d fc7; features: the kind of features (core/data/feature_kinds.py), "grid"
    or "boxes" Regions (Ni, R, D) float16 of the attention decoders instead (core/data/regions.py;
    UserError saying how to build them when the folder has none). lazy: region features are
    read per minibatch from disk (a RegionFile) instead of loaded whole; None: when the splits'
    region files together are larger than LAZY_SHARE of this machine's memory (COCO's 36 boxes of
    2048-d are 18 GB).
    -> dict with train_captions (Nc, L) int32, train_image_idxs (Nc,) int32,
       train_features (Ni, D) float32, train_urls (Ni,) str, the same for val (and test when the
       folder has one; `data_splits(data)` lists them), idx_to_word (list), word_to_idx (dict),
       dataset_id (str, `dataset_id` of the train PCA features and vocabulary, whichever features).
       With max_train, the kept caption rows are subset_rows(Nc, max_train, seed), in order.
    """
    base_dir = Path(base_dir)
    hint = f"fetch it with `{FETCH_HINT}`" if base_dir.resolve() == COCO_DIR else "check --data_dir"
    if not base_dir.is_dir():
        raise UserError(f"data directory {base_dir} not found: {hint}")
    data, files = {}, {}  # files: each split's features file, for messages
    captions_path = require_file(base_dir / "coco2014_captions.h5", hint)
    splits = SPLITS + tuple(s for s in OPTIONAL_SPLITS
                            if _has_dataset(captions_path, f"{s}_captions"))
    data.update(_read_h5(captions_path,
                         [f"{s}_{k}" for s in splits for k in ("captions", "image_idxs")]))
    kind = feature_kind(features)
    paths = {split: require_file(kind.path(base_dir, split, pca_features),
                             f"{base_dir} has no {kind.label}: {kind.missing}" if kind.missing
                             else hint) for split in splits}
    per_minibatch = kind.regions and _too_large(paths.values(), lazy)
    for split in splits:
        path = paths[split]
        if per_minibatch:
            data[f"{split}_features"] = RegionFile(path, kind)
        else:
            data[f"{split}_features"] = _check_features(
                kind.assemble(_read_h5(path, list(kind.datasets)), path), path, kind)
        files[split] = path.name
        urls_path = require_file(base_dir / f"{split}2014_urls.txt", hint)
        data[f"{split}_urls"] = np.array(urls_path.read_text(encoding="utf-8").splitlines())

    require_file(base_dir / "coco2014_vocab.json", hint)
    data["idx_to_word"], data["word_to_idx"] = load_vocab(base_dir)
    if features != FC7 or not pca_features:  # the id is always that of the fc7 PCA features
        first = _read_h5(require_file(FEATURE_KINDS[FC7].path(base_dir, "train"), hint),
                         ["features"],
                         rows=256)["features"]
    else:
        first = data["train_features"]
    data["dataset_id"] = dataset_id(first, data["idx_to_word"])
    data["encoder"] = dataset_encoder(base_dir)
    data["features_kind"] = kind.name
    data["regions"] = kind.regions_identity(base_dir)  # checkpoints record and check it
    _check_consistent(data, base_dir, files)

    return data if max_train is None else keep_captions(data, max_train, seed, base_dir)


# region files larger together than this share of the memory are read per minibatch (loaded whole,
# a box file takes about three times its size while its arrays are put together)
LAZY_SHARE = 0.25


def _too_large(paths, lazy):
    """Whether to read the splits' region files per minibatch: lazy if given, else whether their
    features together are larger than LAZY_SHARE of this machine's memory."""
    if lazy is not None:
        return lazy
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    total = 0
    for path in paths:
        try:
            with h5py.File(path, "r") as f:
                if isinstance(f.get("features"), h5py.Dataset):
                    total += f["features"].nbytes
        except OSError:
            pass  # _read_h5 says why
    return total > LAZY_SHARE * memory


class RegionFile:
    """A split's regions read from disk per minibatch, for files larger than memory: indexing it
    as load_coco_data's Regions, regions[rows] with rows an int, (B,) ints or a slice, reads those
    images only (the small arrays, a box file's boxes, counts and sizes, are read and checked once)
    and gives what load_coco_data would have held; UserError naming the file and row for NaN/inf
    in what it reads. The file is open only while it reads."""

    def __init__(self, path, kind):
        self.path, self.kind = Path(path), kind
        small = [n for n in kind.datasets if n != "features"]
        self.small = _read_h5(path, small) if small else {}
        first = _read_h5(path, ["features"], rows=1)["features"]  # checks it is an array
        if first.ndim != 3 or not np.issubdtype(first.dtype, np.floating):
            raise UserError(f"{path}: features must be a 3-D float array (images, regions, "
                            f"dimensions), got {first.ndim}-D {first.dtype}")
        with h5py.File(path, "r") as f:
            self.shape = f["features"].shape
            # the shapes and boxes checked once (the features only for their shape)
            kind.check_arrays(dict(self.small, features=f["features"]), path)
            check_stored(f["features"], path)
        self.ndim, self.dtype = 3, first.dtype
        self.stamp = _stamp(path)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        if _stamp(self.path) != self.stamp:  # HDF5 reads a changed file's missing bytes as zeros
            raise UserError(f"{self.path} changed while the run was reading it (its size or time "
                            "differs from when it was opened): rebuild or restore the file and "
                            "resume the run")
        if isinstance(rows, slice):
            rows = np.arange(len(self))[rows]
        rows = np.asarray(rows)
        flat = rows.reshape(-1)
        unique, inverse = np.unique(flat, return_inverse=True)
        with h5py.File(self.path, "r") as f:
            stored = f["features"]
            arrays = {"features": stored[unique] if len(unique) else
                      np.zeros((0,) + stored.shape[1:], stored.dtype)}
        arrays.update({k: v[unique] for k, v in self.small.items()})
        out = self.kind.assemble(arrays, self.path)
        floats = [a.reshape(len(unique), -1) for a in out.arrays()[:2] if a is not None]
        bad = ~np.concatenate([np.isfinite(a) for a in floats], axis=1).all(axis=1)
        if bad.any():
            raise UserError(f"{self.path}: feature row {int(unique[np.argmax(bad)])} holds NaN or "
                            "inf values; rebuild the features")
        return out[inverse.reshape(rows.shape)]


def _stamp(path):
    """(size, modification time) of a file."""
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def check_stored(dataset, path):
    """UserError when an h5 dataset's stored bytes reach past the end of its file (a file cut
    short, whose missing rows HDF5 would read as zeros)."""
    size = os.path.getsize(path)
    store = dataset.id
    if dataset.chunks is None:
        end = store.get_offset() + store.get_storage_size() if store.get_offset() else 0
    else:
        end = max((info.byte_offset + info.size for info in
                   map(store.get_chunk_info, range(store.get_num_chunks()))), default=0)
    if end > size:
        raise UserError(f"{path} is cut short: its {dataset.name[1:]} need {end:,} bytes, the "
                        f"file has {size:,} (an unfinished copy or download?): copy or rebuild it "
                        "again")


def count_training_captions(base_dir):
    """The number of training captions of a data directory, read from the captions file's header
    (the recipe depends on it before the data is loaded); None when it cannot be read, which
    load_coco_data then reports."""
    try:
        with h5py.File(Path(base_dir) / "coco2014_captions.h5", "r") as f:
            return int(f["train_captions"].shape[0])
    except (OSError, KeyError, TypeError, AttributeError, IndexError):
        return None


def split_names(base_dir):
    """The splits a data directory's captions file holds, read from its header (() when it cannot be
    read, which load_coco_data then reports)."""
    path = Path(base_dir) / "coco2014_captions.h5"
    if not path.is_file():
        return ()
    return tuple(s for s in SPLITS + OPTIONAL_SPLITS if _has_dataset(path, f"{s}_captions"))


def dataset_encoder(base_dir):
    """The image encoder a data directory's features come from, as its transform's info names it
    ("vgg16" for the CS231n download, which ships no transform, and for older builds)."""
    try:
        with np.load(Path(base_dir) / FEATURE_KINDS[FC7].transform_file, allow_pickle=False) as f:
            info = json.loads(str(f["info"]))
    except (OSError, KeyError, ValueError):
        return "vgg16"
    return str(info.get("encoder", "vgg16")) if isinstance(info, dict) else "vgg16"


def keep_captions(data, max_train, seed, base_dir):
    """The data with only `subset_rows(Nc, max_train, seed)` of its training captions (a new
    dict)."""
    num_train = data["train_captions"].shape[0]
    if not 0 < max_train <= num_train:
        raise UserError(f"--num_samples {max_train} is out of range: {base_dir} has {num_train} "
                        f"training captions")
    rows = subset_rows(num_train, max_train, seed)
    return dict(data, train_captions=data["train_captions"][rows],
                train_image_idxs=data["train_image_idxs"][rows])


def subset_rows(num_captions, size, seed):
    """The caption rows `training.py --num_samples size --seed seed` trains on: (size,) sorted,
    drawn without replacement."""
    return np.sort(np.random.default_rng(seed).choice(num_captions, size=size, replace=False))


def describe_features(data, split="train"):
    """"512-d features", "49 regions of 64-d features" or "up to 36 boxes of 128-d features": a
    loaded dataset's features of a split, for what a run prints."""
    return feature_kind(data.get("features_kind", FC7)).describe(data[f"{split}_features"])


def data_splits(data):
    """The splits a loaded dataset holds: ("train", "val") or ("train", "val", "test")."""
    return tuple(s for s in SPLITS + OPTIONAL_SPLITS if f"{s}_captions" in data)


def _has_dataset(path, name):
    """Whether the h5 file holds a dataset of that name (False when it cannot be read: _read_h5 says
    why)."""
    try:
        with h5py.File(path, "r") as f:
            return name in f
    except OSError:
        return False


def _check_features(features, path, kind):
    """features (Ni, D) or Regions (Ni, R, D) -> the same; UserError for another shape or dtype, or
    NaN/inf values."""
    regions = kind.regions
    array = features.features if regions else features
    if array.ndim != (3 if regions else 2) or not np.issubdtype(array.dtype, np.floating):
        raise UserError(f"{path}: features must be a {3 if regions else 2}-D float array (images, "
                        f"{'regions, ' if regions else ''}dimensions), got shape {array.shape} of "
                        f"{array.dtype}")
    bad = ~np.isfinite(array).reshape(len(array), -1).all(axis=1)
    if bad.any():
        raise UserError(f"{path}: {int(bad.sum())} of {len(array)} feature rows hold NaN or inf "
                        f"values (first: row {int(np.argmax(bad))}); rebuild the features")
    return features


def _check_consistent(data, base_dir, files):
    """UserError when the loaded arrays do not fit together (shapes, index ranges, URL counts),
    naming the files; files: each split's features file name."""
    V = len(data["idx_to_word"])
    per_image = 2 if feature_kind(data["features_kind"]).counted else 1  # any number of boxes
    for split in data_splits(data)[1:]:
        if data["train_features"].shape[per_image:] != data[f"{split}_features"].shape[per_image:]:
            raise UserError(f"{base_dir}: the train split has {describe_features(data)} but the "
                            f"{split} split {describe_features(data, split)}")
    for split in data_splits(data):
        caps, idxs = data[f"{split}_captions"], data[f"{split}_image_idxs"]
        feats = data[f"{split}_features"]
        for name, array in (("captions", caps), ("image_idxs", idxs)):
            if not np.issubdtype(array.dtype, np.integer):
                raise UserError(f"{base_dir}: {split}_{name} must hold integers, not {array.dtype}")
        if caps.shape[0] == 0:
            raise UserError(f"{base_dir}: the {split} split has no captions")
        if caps.ndim != 2 or idxs.shape != (caps.shape[0],):
            raise UserError(f"{base_dir}: {split} captions {caps.shape} and image indices "
                            f"{idxs.shape} do not match")
        if idxs.size and (idxs.min() < 0 or idxs.max() >= feats.shape[0]):
            raise UserError(f"{base_dir}: {split} image indices of coco2014_captions.h5 go past "
                            f"the {feats.shape[0]} rows of {files[split]}: the two come from "
                            f"different builds; rebuild the folder")
        if caps.size and (caps.min() < 0 or caps.max() >= V):
            raise UserError(f"{base_dir}: {split} captions hold word indices outside the {V}-word "
                            f"vocabulary")
        if len(data[f"{split}_urls"]) != feats.shape[0]:
            raise UserError(f"{base_dir}: {files[split]} has {feats.shape[0]} rows but "
                            f"{split}2014_urls.txt lists {len(data[f'{split}_urls'])} images: the "
                            "two come from different builds; rebuild the folder")


def sample_coco_minibatch(data, batch_size=100, split="train", rng=None):
    """Random caption rows, drawn without replacement within the batch (the CS231n API; the
    solvers draw their minibatches from a per-epoch permutation instead).

    -> captions (B, L) int32, image_features (B, D) float32, urls (B,) str.
    """
    rng = np.random.default_rng() if rng is None else rng
    num = data[f"{split}_captions"].shape[0]
    rows = rng.choice(num, size=min(batch_size, num), replace=False)
    image_idxs = data[f"{split}_image_idxs"][rows]
    return (data[f"{split}_captions"][rows], data[f"{split}_features"][image_idxs],
            data[f"{split}_urls"][image_idxs])
