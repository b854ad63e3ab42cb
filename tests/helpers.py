"""Shared test helpers: numerical gradient checks in float64 by centered differences, and tiny
models and solvers of every type built through the registry."""
from pathlib import Path

import numpy as np
import pytest

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
