"""Numerical gradient checking in float64 by centered differences."""
import numpy as np


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
