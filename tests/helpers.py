"""Shared test helpers: numerical gradient checks in float64 by centered differences, and tiny
models and solvers of every type built through the registry."""
from pathlib import Path

import numpy as np
import pytest

from core.data.feature_kinds import FEATURE_KINDS
from core.data.regions import Regions
from core.model.registry import BACKENDS, MODEL_TYPES, build_model, tiny_sizes


def numeric_gradient(f, x, dout, h=1e-5):
    """Gradient of sum(f() * dout) with respect to x, by centered differences.

    f: callable of no arguments that reads x (modified in place here); x: float64 array;
    dout: upstream gradient with the shape of f()'s output (or None for scalar f).
    """
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        plus = f()
        x[i] = old - h
        minus = f()
        x[i] = old
        diff = plus - minus
        grad[i] = np.sum(diff * dout) / (2 * h) if dout is not None else diff / (2 * h)
        it.iternext()
    return grad


def rel_error(x, y):
    """Largest absolute difference relative to the largest magnitude in the pair of arrays.

    Normwise rather than elementwise, so entries near zero (where centered differences
    have only absolute accuracy) do not dominate.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.max(np.abs(x - y)) / max(1e-12, np.max(np.abs(x)) + np.max(np.abs(y))))


def assert_gradients(f, args, grads, dout, tol=1e-7):
    """Check each analytic gradient in grads against centered differences of f with respect
    to the matching array in args (same order); dout is the upstream gradient of f()."""
    assert len(args) == len(grads)
    for k, (arg, grad) in enumerate(zip(args, grads)):
        assert grad.shape == arg.shape, f"gradient {k}: shape {grad.shape} != {arg.shape}"
        error = rel_error(grad, numeric_gradient(f, arg, dout))
        assert error < tol, f"gradient {k}: relative error {error:.2e}"


TINY_SIZES = tiny_sizes()  # each size flag's tiny value, from the registry
# every decoder with every kind of features it reads: (model type, kind), e.g. ("updown", "boxes")
DECODERS = [(name, kind) for name, row in MODEL_TYPES.items() for kind in row.feature_kinds]
DECODER_IDS = [f"{name}-{kind}" for name, kind in DECODERS]


def box_rows(features, counts=None):
    """(N, R, D) region features -> Regions of boxes as the box files load: region k of image n a
    box of fixed geometry, the rows past counts[n] padding (zero, and outside the mask); counts
    (N,) int, default 1 + n % R (every image but every R-th is padded)."""
    features = np.asarray(features)
    N, R, _ = features.shape
    counts = 1 + np.arange(N) % R if counts is None else np.asarray(counts)
    k = np.arange(R, dtype=np.float64)[:, None]
    x0, y0 = 0.6 * k / R, 0.1 + 0.05 * k
    corners = np.concatenate([x0, y0, x0 + 0.3, y0 + 0.5], axis=1)  # (R, 4) fractions
    geometry = np.concatenate([corners, (0.3 * 0.5) * np.ones((R, 1))], axis=1)  # (R, 5)
    mask = np.arange(R)[None, :] < counts[:, None]
    return Regions(np.where(mask[..., None], features, 0).astype(features.dtype),
                   np.where(mask[..., None], geometry, 0).astype(features.dtype), mask)


def grid_rows(features):
    """(N, R, D) grid features -> Regions, as the grid files load."""
    return Regions(np.asarray(features))


def tiny_data(kind, rng, images=3, regions=4, dim=6, length=7, words=9):
    """Tiny training data of a kind of features ("fc7" (Ni, D), "grid" Regions (Ni, R, D), "boxes"
    Regions (Ni, R, D) with geometry and padding): images, random captions of `length` over `words` words (<START>
    first, <END> last); idx_to_word is left to the caller."""
    row = FEATURE_KINDS[kind]
    shape = (images, regions, dim) if row.regions else (images, dim)
    features = rng.standard_normal(shape).astype(np.float32)
    if row.counted:
        features = box_rows(features)
    elif row.regions:
        features = grid_rows(features)
    captions = rng.integers(4, words, size=(images, length))
    captions[:, 0], captions[:, -1] = 1, 2
    return {"train_features": features, "train_captions": captions, "features_kind": kind}


def tiny_model(name, data, seed=0, **sizes):
    """A small model of type `name` (a row of core.model.registry.MODEL_TYPES) for the data, through the registry."""
    return build_model(name, data, dict(TINY_SIZES, **sizes), seed=seed)


def tiny_solver(name, data, model=None, learning_rate=1e-2, update_rule="adam", **kwargs):
    """The registry's solver of `name` around `model` (a fresh tiny_model unless given); update_rule
    applies where the solver takes one (the numpy models)."""
    solver_class = MODEL_TYPES[name].solver_class
    options = {k: v for k, v in {"update_rule": update_rule}.items() if k in solver_class.OPTIONS}
    return solver_class(model if model is not None else tiny_model(name, data), data, learning_rate=learning_rate,
                        **options, **kwargs)


def weights(model):
    """name -> float numpy copy of every weight of a model of any backend."""
    return {k: np.array(v.numpy() if hasattr(v, "numpy") else v, copy=True) for k, v in model.state_arrays().items()}


def checkpoint_name(name, stem="last"):
    """A file name with the suffix of the model type's checkpoint format: ("rnn", "last") -> "last.npz"."""
    return stem + BACKENDS[MODEL_TYPES[name].backend].suffix


def one_line_error(capsys, call, *fragments, code=2):
    """Run a script's main in-process; it must exit with `code` and one stderr line holding the fragments."""
    with pytest.raises(SystemExit) as e:
        call()
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == code, err
    assert len(err) == 1, err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    return err[0]
