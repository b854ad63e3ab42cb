"""Image features as the decoders see them: VGG16 fc7 (4096-d) reduced to 512-d by PCA, and for
the attention decoders a grid of region features from VGG16's last convolutional block.

Shape letters: N images, F = 4096 fc7 features, P PCA dimensions (512 in the CS231n layout),
R regions (7 x 7 = 49 of pool5, or 14 x 14 = 196 of conv5_3), C = 512 channels, G grid PCA
dimensions.

Each reduction is saved as a *transform* file next to the dataset
(`vgg16_fc7_pca_transform.npz`: mean (F,), components (P, F), bias (P,), and a JSON `info`
with the VGG16 weights spec and a dataset id; `vgg16_grid_pca_transform.npz` alike over the C
channels of a region, its info recording the grid size), so new images can be projected exactly
as the training images were.
"""
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from core.data.vocab import dataset_id, load_vocab
from core.util.errors import UserError
from core.util.fileio import atomic_write
from core.data.image_utils import to_rgb8
from core.data.encoders import (  # noqa: F401  (also importable here)
    ENCODERS, FC7_DIM, GRID_CHANNELS, GRID_SIZES, describe_weights, encoder_of, parse_weights)
from core.data.regions import region_boxes  # noqa: F401  (also importable here)

TRANSFORM_FILE = "vgg16_fc7_pca_transform.npz"
GRID_TRANSFORM_FILE = "vgg16_grid_pca_transform.npz"
# the grid PCA is fitted on at most this many train regions, drawn at random
GRID_PCA_FIT_REGIONS = 200_000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def torchvision_network(build, imagenet_weights, spec, name):
    """A torchvision classifier with the weights a spec names: seeded random ones (without
    touching the caller's RNG), torchvision's ImageNet ones, or a state_dict file."""
    if spec["weights"] == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec["seed"])
            return build(weights=None)
    if spec["weights"] == "imagenet":
        try:
            return build(weights=imagenet_weights)
        except Exception as e:  # offline or blocked: say how to get around it
            raise UserError(f"cannot load torchvision's ImageNet {name} weights "
                            f"({type(e).__name__}: {e}); download them once online, or pass "
                            "--weights PATH or --weights random") from None
    network = build(weights=None)
    try:
        network.load_state_dict(torch.load(spec["path"], map_location="cpu", weights_only=True))
    except Exception as e:
        raise UserError(f"cannot load {name} weights from {spec['path']} "
                        f"({type(e).__name__}: {e})") from None
    return network


class VGG16FC7(torch.nn.Module):
    """VGG16 up to fc7: conv features, fc6 + ReLU, fc7 + ReLU (dropout is inactive in eval mode).

    forward: images (N, 3, 224, 224) normalised -> (N, 4096); with grid_size 7 or 14 also the
    regions (N, R = grid_size ** 2, 512) of pool5 or of conv5_3 after its ReLU, row-major (region
    r = row * grid_size + column).
    """

    def __init__(self, spec):
        super().__init__()
        from torchvision.models import VGG16_Weights, vgg16

        vgg = torchvision_network(vgg16, VGG16_Weights.IMAGENET1K_V1, spec, "VGG16")
        self.features, self.avgpool = vgg.features, vgg.avgpool
        self.fc = vgg.classifier[:5]  # fc6, ReLU, Dropout, fc7, ReLU
        self.eval()

    def forward(self, images, grid_size=None):
        conv5 = self.features[:-1](images)  # (N, 512, 14, 14), after the last ReLU
        pool5 = self.features[-1](conv5)  # (N, 512, 7, 7)
        fc7 = self.fc(torch.flatten(self.avgpool(pool5), 1))  # (N, 4096)
        if grid_size is None:
            return fc7
        grid = pool5 if grid_size == 7 else conv5
        return fc7, grid.flatten(2).transpose(1, 2)  # (N, R, 512)

    def box_map(self, images):
        """images (N, 3, S, S) -> conv5_3 after its ReLU (N, 512, S / 16, S / 16): the map boxes
        are pooled from (core/data/boxes.py)."""
        return self.features[:-1](images)


class ResNet101Features(torch.nn.Module):
    """ResNet-101 up to its last convolutional block, as self-critical.pytorch's prepro_feats.py
    reads it: forward: images (N, 3, S, S) normalised -> the block's mean over its cells (N, 2048)
    (the pooled vector the fc7-style decoders read); with grid_size also the cells themselves
    (N, R = grid_size ** 2, 2048), row-major: 7 x 7 at S = 224, 14 x 14 at S = 448."""

    def __init__(self, spec):
        super().__init__()
        from torchvision.models import ResNet101_Weights, resnet101

        # random weights start every residual branch at zero (torchvision's zero_init_residual):
        # with the eval-mode batch norm of a network never trained, 33 random blocks would grow
        # the activations past float16's range, in which the regions are stored
        net = torchvision_network(lambda weights: resnet101(weights=weights,
                                                             zero_init_residual=True),
                                   ResNet101_Weights.IMAGENET1K_V1, spec, "ResNet-101")
        self.body = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1,
                                        net.layer2, net.layer3, net.layer4)
        self.eval()

    def forward(self, images, grid_size=None):
        cells = self.body(images)  # (N, 2048, S / 32, S / 32)
        pooled = cells.mean(dim=(2, 3))  # (N, 2048)
        if grid_size is None:
            return pooled
        if cells.shape[-1] != grid_size:
            raise ValueError(f"a {images.shape[-1]}-pixel image gives {cells.shape[-1]} cells a "
                             f"side, not {grid_size}")
        return pooled, cells.flatten(2).transpose(1, 2)  # (N, R, 2048)

    def box_map(self, images):
        """images (N, 3, S, S) -> layer4 (N, 2048, S / 32, S / 32): the map boxes are pooled
        from."""
        return self.body(images)


def preprocess(crop=224):
    """The standard ImageNet evaluation preprocessing: resize the shorter side to crop * 256 / 224
    (256 for 224), center crop, normalise."""
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(crop * 256 // 224), transforms.CenterCrop(crop),
                               transforms.ToTensor(),
                               transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class _ImageFiles(Dataset):
    """Image paths -> (tensor (3, crop, crop), index, error message or "")."""

    def __init__(self, paths, crop=224):
        self.paths = [str(p) for p in paths]
        self.crop = crop
        self.transform = preprocess(crop)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            with Image.open(self.paths[i]) as image:
                return self.transform(to_rgb8(image)), i, ""
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            return torch.zeros(3, self.crop, self.crop), i, f"{type(e).__name__}: {e}"


def extract_fc7(paths, spec, batch_size=32, device="cpu", num_workers=0, progress=True, desc="fc7",
                grid_size=None):
    """The image features of image files, by the encoder the spec names (VGG16's fc7 unless it
    names another).

    paths: N image paths -> features (N, F) float32 (F = 4096 for VGG16, 2048 for ResNet-101), bad
    {index: error} for images that could not be read (their rows are zero); with grid_size (7 or
    14) also the regions (N, grid_size ** 2, C) float16 (C = 512 for VGG16, 2048 for ResNet-101;
    float16 keeps COCO's VGG16 train grid at 4 GB).
    """
    encoder = encoder_of(spec)
    model = encoder.build(spec).to(device)
    loader = DataLoader(_ImageFiles(paths, encoder.crop(grid_size)), batch_size=batch_size,
                        num_workers=num_workers, shuffle=False)
    out = np.zeros((len(paths), encoder.pooled_dim), dtype=np.float32)
    grid = None if grid_size is None else np.zeros(
        (len(paths), grid_size ** 2, encoder.grid_channels), dtype=np.float16)
    bad = {}
    with torch.inference_mode():
        for images, idx, errors in tqdm(loader, desc=desc, unit="batch", disable=not progress):
            result = model(images.to(device), grid_size)
            if grid is None:
                out[idx.numpy()] = result.float().cpu().numpy()
            else:
                out[idx.numpy()] = result[0].float().cpu().numpy()
                grid[idx.numpy()] = result[1].half().cpu().numpy()
            bad.update({int(i): e for i, e in zip(idx, errors) if e})
    return (out, bad) if grid is None else (out, bad, grid)


def fit_pca(train_fc7, dim, chunk_rows=None, progress=True):
    """PCA on training features only.

    train_fc7: (N, F) array or h5py dataset -> transform dict: mean (F,), components (dim, F),
    bias (dim,) zeros, all float32.
    With chunk_rows, IncrementalPCA runs over row chunks (for features that do not fit in memory).
    """
    from sklearn.decomposition import PCA, IncrementalPCA

    N = train_fc7.shape[0]
    if dim > min(N, train_fc7.shape[1]):
        raise UserError(f"cannot fit {dim} PCA components to {N} training images of "
                        f"{train_fc7.shape[1]} features: "
                        "use more training images or a smaller --pca_dim")
    if chunk_rows is None:
        pca = PCA(n_components=dim, svd_solver="full").fit(np.asarray(train_fc7, dtype=np.float32))
    else:
        chunk_rows = max(chunk_rows, dim)
        starts = list(range(0, N, chunk_rows))
        # IncrementalPCA needs >= dim rows a call: merge the tail
        if len(starts) > 1 and N - starts[-1] < dim:
            starts.pop()
        ends = starts[1:] + [N]
        pca = IncrementalPCA(n_components=dim)
        for s, e in tqdm(list(zip(starts, ends)), desc="PCA", unit="chunk", disable=not progress):
            pca.partial_fit(np.asarray(train_fc7[s:e], dtype=np.float32))
    return {"mean": pca.mean_.astype(np.float32), "components": pca.components_.astype(np.float32),
            "bias": np.zeros(dim, dtype=np.float32)}


def fit_grid_pca(train_grid, dim, seed=0):
    """PCA of the channels of a region, fitted on at most GRID_PCA_FIT_REGIONS train regions drawn
    at random with `seed` (every region of the sample dataset; a 1.7% sample of COCO's 4 million).

    train_grid (N, R, C) -> transform dict: mean (C,), components (dim, C), bias (dim,) zeros.
    """
    regions = train_grid.reshape(-1, train_grid.shape[-1])
    if dim > min(len(regions), regions.shape[1]):
        raise UserError(f"--grid_pca_dim {dim} is larger than the {regions.shape[1]} channels of a "
                        f"region")
    if len(regions) > GRID_PCA_FIT_REGIONS:
        regions = regions[np.sort(np.random.default_rng(seed).choice(len(regions),
                                                                     GRID_PCA_FIT_REGIONS, False))]
    return fit_pca(regions.astype(np.float32), dim, progress=False)


def project_grid(grid, transform, chunk=4096):
    """grid (N, R, C), a transform over C -> (N, R, G) float16, projected in chunks of images (the
    float32 intermediate of COCO's whole train grid would be 16 GB)."""
    out = np.empty(grid.shape[:2] + (transform["components"].shape[0],), dtype=np.float16)
    for s in range(0, len(grid), chunk):
        part = grid[s:s + chunk]
        out[s:s + chunk] = project(part.reshape(-1, part.shape[-1]),
                                   transform).reshape(out[s:s + chunk].shape)
    return out


def project(fc7, transform):
    """fc7 (N, F), transform dict with mean (F,), components (P, F), bias (P,) -> (N, P) float32:
    (fc7 - mean) components^T + bias."""
    out = (np.asarray(fc7, dtype=np.float32) - transform["mean"]) @ transform["components"].T
    out += transform["bias"]
    return out


def recover_projection(fc7, pca, chunk_rows=8192, progress=True):
    """Least-squares linear map from fc7 to given PCA features, for data that ships both but no
    transform (the CS231n files): pca ~ (fc7 - mean) A^T + bias, fitted on all rows but the last
    10%, which measure the fit.

    fc7 (N, F), pca (N, P) arrays or h5py datasets -> transform dict, R^2 on the held-out rows.
    """
    N, F = fc7.shape
    P = pca.shape[1]
    fit_rows = N - max(N // 10, 1)
    if fit_rows <= F:
        raise UserError(f"{N} training images are too few to recover a linear map from {F} fc7 "
                        f"features")
    sums_x, sums_y = np.zeros(F), np.zeros(P)
    xtx, xty = np.zeros((F, F)), np.zeros((F, P))
    for s in tqdm(range(0, fit_rows, chunk_rows), desc="fitting fc7 -> PCA map", unit="chunk",
                  disable=not progress):
        x = np.asarray(fc7[s:min(s + chunk_rows, fit_rows)], dtype=np.float32)
        y = np.asarray(pca[s:min(s + chunk_rows, fit_rows)], dtype=np.float32)
        sums_x += x.sum(axis=0)
        sums_y += y.sum(axis=0)
        xtx += x.T @ x
        xty += x.T @ y
    mean_x, mean_y = sums_x / fit_rows, sums_y / fit_rows
    cov = xtx - fit_rows * np.outer(mean_x, mean_x)
    cross = xty - fit_rows * np.outer(mean_x, mean_y)
    ridge = 1e-8 * max(np.trace(cov) / F, 1e-12)
    A = np.linalg.solve(cov + ridge * np.eye(F), cross)  # (F, P)
    transform = {"mean": mean_x.astype(np.float32), "components": A.T.astype(np.float32),
                 "bias": mean_y.astype(np.float32)}
    held_x = np.asarray(fc7[fit_rows:], dtype=np.float32)
    held_y = np.asarray(pca[fit_rows:], dtype=np.float32)
    residual = ((project(held_x, transform) - held_y) ** 2).sum()
    total = ((held_y - held_y.mean(axis=0)) ** 2).sum()
    return transform, float(1 - residual / max(total, 1e-30))


def save_transform(path, transform, info):
    """Write an fc7 -> PCA transform (dict with mean (F,), components (P, F), bias (P,)) and its
    info (JSON-able dict: VGG16 weights spec, dataset_id, ...)."""
    arrays = {k: np.asarray(transform[k], dtype=np.float32) for k in ("mean", "components", "bias")}
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays, info=np.array(json.dumps(info))))


def load_transform(path):
    """-> transform dict (mean (F,), components (P, F), bias (P,)), info dict; UserError naming the
    file and the array when it is not one (unreadable, arrays of the wrong shape or not finite, an
    info that is not a dict, a grid size that is not one of GRID_SIZES)."""
    try:
        if not zipfile.is_zipfile(path):
            raise UserError(f"{path} is not a feature transform file (an .npz of mean, components, "
                            "bias and info written by features_extraction.py): rebuild the dataset "
                            "or remove it")
        with np.load(path, allow_pickle=False) as f:
            transform = {k: f[k] for k in ("mean", "components", "bias")}
            info = json.loads(str(f["info"]))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read the feature transform {path} ({type(e).__name__}: {e})") \
            from None
    problem = transform_problem(transform, info)
    if problem:
        raise UserError(f"the feature transform {path} is damaged ({problem}): rebuild the dataset "
                        "with features_extraction.py")
    return transform, info


def transform_problem(transform, info):
    """What is wrong with a transform and its info, or None."""
    if not isinstance(info, dict):
        return f"its info is a {type(info).__name__}, not a dict"
    if "grid_size" in info and info["grid_size"] not in GRID_SIZES:
        return f"its info's grid_size {info['grid_size']!r} is not one of {GRID_SIZES}"
    components = transform["components"]
    if components.ndim != 2:
        return f"components has shape {components.shape}, not (P, F)"
    P, F = components.shape  # P output dimensions of F input channels
    shapes = {"mean": (F,), "components": (P, F), "bias": (P,)}
    for name, array in transform.items():
        if array.shape != shapes[name]:
            return f"{name} has shape {array.shape}, expected {shapes[name]} (components {(P, F)})"
        if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
            return f"{name} holds values that are not finite floats"
    return None


def ensure_transform(data_dir, progress=True, log=print):
    """The fc7 -> PCA transform of a data directory -> (transform dict, info dict).

    Datasets built by features_extraction.py ship one. For the CS231n download, which ships
    fc7 and PCA features but no transform, it is recovered once by least squares from the
    train features and saved next to them.
    """
    data_dir = Path(data_dir)
    path = data_dir / TRANSFORM_FILE
    if path.is_file():
        return load_transform(path)
    fc7_path = data_dir / "train2014_vgg16_fc7.h5"
    pca_path = data_dir / "train2014_vgg16_fc7_pca.h5"
    if not (fc7_path.is_file() and pca_path.is_file()):
        raise UserError(f"{data_dir} has no {TRANSFORM_FILE} and no {fc7_path.name} to fit one "
                        f"from: build the dataset with features_extraction.py")
    log(f"{data_dir} ships no fc7 -> PCA transform: fitting it once from {fc7_path.name} and "
        f"{pca_path.name}")
    try:
        with h5py.File(fc7_path, "r") as f, h5py.File(pca_path, "r") as g:
            transform, r2 = recover_projection(f["features"], g["features"], progress=progress)
            ident = dataset_id(g["features"], load_vocab(data_dir)[0])
    except OSError as e:
        raise UserError(f"cannot read {fc7_path} / {pca_path} ({e})") from None
    info = {"vgg16": {"weights": "imagenet"}, "pca_dim": int(transform["components"].shape[0]),
            "fitted_on": "least squares from train fc7 to the shipped PCA features",
            "held_out_r2": r2, "dataset_id": ident,
            "note": "the CS231n features were extracted with a different VGG16 port than "
            "torchvision's, so features of new images only approximate the training features"}
    save_transform(path, transform, info)
    log(f"saved {path} (held-out R^2 of the fit: {r2:.4f})")
    return transform, info
