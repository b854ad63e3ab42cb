"""Vanilla RNN cell and word embedding, with hand-written forward and backward passes.

Shape letters: N batch, T time, D input, H hidden, V vocabulary, W word vector.
The recurrence is h_t = tanh(x_t Wx + h_{t-1} Wh + b).

The whole-sequence functions keep time-major buffers internally so that each step
works on contiguous (N, H) blocks; the input projection for all steps is one matrix
product before the loop and the weight gradients are single matrix products after it.
"""
import numpy as np


def rnn_step_from_projection(xa, prev_h, Wh):
    """The RNN step after its input projection xa = x Wx + b (decoding looks it up per word).

    xa (N, H), prev_h (N, H), Wh (H, H) -> next_h (N, H).
    """
    return np.tanh(xa + prev_h @ Wh)


def rnn_step_forward(x, prev_h, Wx, Wh, b):
    """One RNN step (the CS231n reference API; the model runs rnn_forward and, when decoding,
    rnn_step_from_projection, and tests check them against this).

    x (N, D), prev_h (N, H), Wx (D, H), Wh (H, H), b (H,) -> next_h (N, H), cache.
    """
    next_h = rnn_step_from_projection(x @ Wx + b, prev_h, Wh)
    return next_h, (x, prev_h, Wx, Wh, next_h)


def rnn_step_backward(dnext_h, cache):
    """dnext_h (N, H) -> dx (N, D), dprev_h (N, H), dWx (D, H), dWh (H, H), db (H,)."""
    x, prev_h, Wx, Wh, next_h = cache
    da = dnext_h * (1 - next_h * next_h)
    return da @ Wx.T, da @ Wh.T, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def rnn_forward(x, h0, Wx, Wh, b):
    """Run the RNN over a whole sequence.

    x (N, T, D), h0 (N, H), Wx (D, H), Wh (H, H), b (H,) -> h (N, T, H), cache.
    """
    N, T, D = x.shape
    H = h0.shape[1]
    xt = np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(T * N, D)
    hs = (xt @ Wx).reshape(T, N, H)  # (T, N, H): input projections, then hidden states
    hs += b
    prev_h = h0
    for t in range(T):
        a = hs[t]
        a += prev_h @ Wh
        np.tanh(a, out=a)
        prev_h = a
    return hs.transpose(1, 0, 2), (xt, h0, Wx, Wh, hs)


def rnn_backward(dh, cache):
    """dh (N, T, H) upstream gradients of every hidden state
    -> dx (N, T, D), dh0 (N, H), dWx (D, H), dWh (H, H), db (H,).
    """
    xt, h0, Wx, Wh, hs = cache
    T, N, H = hs.shape
    da = dh.transpose(1, 0, 2).copy()  # (T, N, H), becomes d(pre-activation) in place
    dprev_h = np.zeros_like(h0)
    for t in range(T - 1, -1, -1):
        g = da[t]
        g += dprev_h
        g *= 1 - hs[t] * hs[t]
        dprev_h = g @ Wh.T
    da2 = da.reshape(T * N, H)
    dx = (da2 @ Wx.T).reshape(T, N, -1).transpose(1, 0, 2)
    dWx = xt.T @ da2
    dWh = h0.T @ da[0]
    if T > 1:
        dWh += hs[:-1].reshape((T - 1) * N, H).T @ da[1:].reshape((T - 1) * N, H)
    return dx, dprev_h, dWx, dWh, da2.sum(axis=0)


def word_embedding_forward(x, W):
    """Look up word vectors.

    x (N, T) int indices in [0, V), W (V, W) -> out (N, T, W), cache.
    """
    return W[x], (x, W.shape, W.dtype)


def word_embedding_backward(dout, cache):
    """dout (N, T, W) -> dW (V, W); rows of repeated words accumulate."""
    x, shape, dtype = cache
    words = x.reshape(-1)
    order = np.argsort(words, kind="stable")  # group the rows of each word together
    sorted_words = words[order]
    # first row of each word
    starts = np.flatnonzero(np.r_[True, sorted_words[1:] != sorted_words[:-1]])
    dW = np.zeros(shape, dtype=dtype)
    dW[sorted_words[starts]] = np.add.reduceat(dout.reshape(-1, shape[1])[order], starts, axis=0)
    return dW
