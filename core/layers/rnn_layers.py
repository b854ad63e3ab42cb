"""Numpy layers shared by the recurrent captioning decoders.

Shape letters: N batch, T time, D input feature, M output feature, V vocabulary.
Every `*_forward` returns `(out, cache)`; the matching `*_backward(dout, cache)` sits
right below it and returns one gradient per forward input, in the same order.
"""
import numpy as np


def sigmoid(x, out=None):
    """Numerically stable logistic function, keeping the input's (floating) dtype.

    Uses sigmoid(x) = 0.5 * (1 + tanh(x / 2)), which never overflows and is one
    vectorised transcendental call. out: optional array to write into (may be x itself).

    x (any shape) -> same shape.
    """
    out = np.multiply(x, 0.5, out=out, dtype=None if out is not None
                      else np.result_type(x, np.float32))
    np.tanh(out, out=out)
    out += 1.0
    out *= 0.5
    return out


def affine_forward(x, w, b):
    """Fully connected layer (the CS231n API: x may have any trailing shape, flattened to D).

    x (N, D) or (N, d1, ..., dk) with D = d1 * ... * dk, w (D, M), b (M,) -> out (N, M), cache.
    """
    x2 = x.reshape(x.shape[0], -1)  # (N, D), a view for a contiguous x
    return x2 @ w + b, (x2, w, x.shape)


def affine_backward(dout, cache):
    """dout (N, M) -> dx (shaped like the forward's x), dw (D, M), db (M,)."""
    x2, w, x_shape = cache
    return (dout @ w.T).reshape(x_shape), x2.T @ dout, dout.sum(axis=0)


def temporal_affine_forward(x, w, b):
    """The same affine layer applied at every time step (the CS231n reference API:
    CaptioningRNN.loss projects only the steps with a target word, and a test checks it against this
    and temporal_softmax_loss).

    x (N, T, D), w (D, M), b (M,) -> out (N, T, M), cache.
    """
    N, T, D = x.shape
    out = (x.reshape(N * T, D) @ w + b).reshape(N, T, -1)
    return out, (x, w)


def temporal_affine_backward(dout, cache):
    """dout (N, T, M) -> dx (N, T, D), dw (D, M), db (M,)."""
    x, w = cache
    N, T, D = x.shape
    dout2 = dout.reshape(N * T, -1)
    dx = (dout2 @ w.T).reshape(N, T, D)
    dw = x.reshape(N * T, D).T @ dout2
    return dx, dw, dout2.sum(axis=0)


def softmax_loss(x, y, norm=1.0, weights=None, smoothing=0.0):
    """Softmax cross-entropy summed over rows (each times its weight) and divided by norm.

    x (M, V) scores, y (M,) int targets in [0, V), weights (M,) or None (all 1), smoothing e:
    label smoothing, the target distribution (1 - e) one-hot + e / V, as torch's cross_entropy
    defines it -> loss (float), dx (M, V).
    """
    M, V = x.shape
    shifted = x - x.max(axis=1, keepdims=True)  # (M, V), max 0 per row
    rows = np.arange(M)
    target = shifted[rows, y]  # (M,) shifted score of the target word
    if smoothing:  # the target distribution's expected shifted score
        target = (1 - smoothing) * target + smoothing * shifted.mean(axis=1)
    probs = np.exp(shifted, out=shifted)
    sums = probs.sum(axis=1)
    if weights is None:
        loss = -np.sum(target - np.log(sums)) / norm
        probs /= (sums * norm)[:, None]
        dx = probs
        dx[rows, y] -= (1 - smoothing) / norm
        if smoothing:
            dx -= smoothing / (V * norm)
        return float(loss), dx
    scale = (weights / norm).astype(x.dtype, copy=False)  # (M,)
    loss = np.sum((np.log(sums) - target) * scale)
    probs *= (scale / sums)[:, None]
    dx = probs
    dx[rows, y] -= (1 - smoothing) * scale
    if smoothing:
        dx -= (smoothing / V) * scale[:, None]
    return float(loss), dx


def temporal_softmax_loss(x, y, mask):
    """Softmax cross-entropy summed over the unmasked time steps, averaged over N (the CS231n
    reference API; see temporal_affine_forward).

    x (N, T, V) scores, y (N, T) int targets in [0, V), mask (N, T) bool
    -> loss (float), dx (N, T, V) (zero where mask is false).
    """
    N, T, V = x.shape
    rows = mask.reshape(N * T)
    loss, dx_rows = softmax_loss(x.reshape(N * T, V)[rows], y.reshape(N * T)[rows], N)
    dx = np.zeros((N * T, V), dtype=dx_rows.dtype)
    dx[rows] = dx_rows
    return loss, dx.reshape(N, T, V)
