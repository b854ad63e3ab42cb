"""CS231n's 25 ImageNet validation images (core/datasets/get_imagenet_val.sh fetches
imagenet_val_25.npz), read in CS231n's form and without running code from the file.

Shape letters: N images.

The file holds X (N, 224, 224, 3) uint8, y (N,) int and label_map, a pickled dict {class index:
names}. X and y load without pickle; the dict is read by an unpickler that builds dicts, strings and
numbers only (and the numpy object array that holds it), so a crafted file cannot run code.
"""
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from core.util.errors import UserError

IMAGENET_FILE = Path(__file__).resolve().parents[1] / "datasets" / "imagenet_val_25.npz"
FETCH_HINT = "cd core/datasets && bash get_imagenet_val.sh"
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype")}


class _DataOnly(pickle.Unpickler):
    """Builds plain data and the numpy array holding it; refuses every other class or function."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def _label_map(path):
    """label_map.npy of the npz -> {int: str}."""
    with zipfile.ZipFile(path) as z:
        data = io.BytesIO(z.read("label_map.npy"))
    np.lib.format.read_magic(data)
    np.lib.format.read_array_header_1_0(data)
    array = _DataOnly(data).load()
    names = array.item() if isinstance(array, np.ndarray) else array
    if not isinstance(names, dict):
        raise ValueError(f"label_map is a {type(names).__name__}, not a dict")
    return {int(k): str(v) for k, v in names.items()}


def load_imagenet_val(num=None, path=IMAGENET_FILE):
    """CS231n's loader: -> X (N, 224, 224, 3) uint8, y (N,) int64, class_names {index: str}; num:
    the first num images only. UserError saying how to fetch the file when it is missing, or
    naming what is wrong when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: fetch it with `{FETCH_HINT}`")
    try:
        with np.load(path, allow_pickle=False) as f:
            X, y = f["X"], f["y"]
        class_names = _label_map(path)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile,
            pickle.UnpicklingError) as e:
        raise UserError(f"{path} is not CS231n's imagenet_val_25.npz ({type(e).__name__}: "
                        f"{e})") from None
    if X.ndim != 4 or X.shape[3] != 3 or y.shape != X.shape[:1]:
        raise UserError(f"{path}: X {X.shape} and y {y.shape} are not (N, H, W, 3) images with N "
                        "labels")
    if num is not None:
        X, y = X[:num], y[:num]
    return X.astype(np.uint8, copy=False), y.astype(np.int64), class_names
