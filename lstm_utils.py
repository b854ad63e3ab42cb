"""LSTM cell with hand-written forward and backward passes.

Shape letters: N batch, T time, D input, H hidden.
Wx (D, 4H), Wh (H, 4H), b (4H,); the 4H axis holds the gates in the order
input, forget, output, candidate (i, f, o, g):

    a = x Wx + h_{t-1} Wh + b
    i, f, o = sigmoid(a[:, :3H]);  g = tanh(a[:, 3H:])
    c_t = f * c_{t-1} + i * g;     h_t = o * tanh(c_t)

The whole-sequence functions use time-major buffers, one matrix product for all
input projections before the loop, and single matrix products for the weight
gradients after it.
"""
import numpy as np

from core.layers.rnn_layers import sigmoid


def _gates(a, H):
    """a (N, 4H) pre-activations -> the same array holding i, f, o, g (in place)."""
    sigmoid(a[:, :3 * H], out=a[:, :3 * H])
    np.tanh(a[:, 3 * H:], out=a[:, 3 * H:])
    return a


def lstm_gates_backward(dh, dc_in, gates, tanh_c, prev_c, H):
    """Gradient of the gate pre-activations for one step.

    dh (N, H), dc_in (N, H) gradient reaching c_t from the future, gates (N, 4H),
    tanh_c (N, H), prev_c (N, H) -> da (N, 4H), dc (N, H) the total gradient of c_t.
    """
    i, f, o, g = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    dc = dh * o * (1 - tanh_c * tanh_c) + dc_in
    da = np.empty_like(gates)
    np.multiply(dc, g, out=da[:, :H])
    da[:, :H] *= i * (1 - i)
    np.multiply(dc, prev_c, out=da[:, H:2 * H])
    da[:, H:2 * H] *= f * (1 - f)
    np.multiply(dh, tanh_c, out=da[:, 2 * H:3 * H])
    da[:, 2 * H:3 * H] *= o * (1 - o)
    np.multiply(dc, i, out=da[:, 3 * H:])
    da[:, 3 * H:] *= 1 - g * g
    return da, dc


def lstm_cell(a, prev_c, out=None):
    """The LSTM's equations from the pre-activations on: the one place they are written, shared by
    every LSTM step here, the attention LSTM and the decoders built on them.

    a (N, 4H) = x Wx + h_{t-1} Wh + b (+ any other input's projection), overwritten with the gate
    values i, f, o, g; prev_c (N, H); out: optional (next_h, next_c, tanh_c) arrays (N, H) to write
    into -> next_h (N, H), next_c (N, H), tanh_c (N, H).
    """
    H = prev_c.shape[1]
    _gates(a, H)
    h, c, tanh_c = out if out is not None else (np.empty_like(prev_c) for _ in range(3))
    np.multiply(a[:, H:2 * H], prev_c, out=c)
    c += a[:, :H] * a[:, 3 * H:]
    np.tanh(c, out=tanh_c)
    np.multiply(a[:, 2 * H:3 * H], tanh_c, out=h)
    return h, c, tanh_c


def lstm_step_from_projection(xa, prev_h, prev_c, Wh):
    """The LSTM step after its input projection xa = x Wx + b (decoding looks it up per word).

    xa (N, 4H), prev_h (N, H), prev_c (N, H), Wh (H, 4H)
    -> next_h (N, H), next_c (N, H), gates (N, 4H) holding i, f, o, g, tanh_c (N, H).
    """
    gates = xa + prev_h @ Wh
    next_h, next_c, tanh_c = lstm_cell(gates, prev_c)
    return next_h, next_c, gates, tanh_c


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    """One LSTM step (the CS231n reference API; the model runs lstm_forward and, when decoding,
    lstm_step_from_projection, and tests check them against this).

    x (N, D), prev_h (N, H), prev_c (N, H), Wx (D, 4H), Wh (H, 4H), b (4H,)
    -> next_h (N, H), next_c (N, H), cache.
    """
    next_h, next_c, gates, tanh_c = lstm_step_from_projection(x @ Wx + b, prev_h, prev_c, Wh)
    return next_h, next_c, (x, prev_h, prev_c, Wx, Wh, gates, tanh_c)


def lstm_step_backward(dnext_h, dnext_c, cache):
    """dnext_h (N, H), dnext_c (N, H)
    -> dx (N, D), dprev_h (N, H), dprev_c (N, H), dWx (D, 4H), dWh (H, 4H), db (4H,).
    """
    x, prev_h, prev_c, Wx, Wh, gates, tanh_c = cache
    H = prev_h.shape[1]
    da, dc = lstm_gates_backward(dnext_h, dnext_c, gates, tanh_c, prev_c, H)
    dprev_c = dc * gates[:, H:2 * H]
    return da @ Wx.T, da @ Wh.T, dprev_c, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def lstm_forward(x, h0, Wx, Wh, b):
    """Run the LSTM over a whole sequence, starting from h0 and c0 = 0.

    x (N, T, D), h0 (N, H), Wx (D, 4H), Wh (H, 4H), b (4H,) -> h (N, T, H), cache.
    """
    N, T, D = x.shape
    H = h0.shape[1]
    xt = np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(T * N, D)
    gates = (xt @ Wx).reshape(T, N, 4 * H)  # (T, N, 4H): projections, then gate values
    gates += b
    cs = np.empty((T, N, H), dtype=gates.dtype)
    tanh_cs = np.empty_like(cs)
    hs = np.empty_like(cs)
    prev_h = h0
    prev_c = np.zeros_like(h0)
    for t in range(T):
        gates[t] += prev_h @ Wh
        # the buffers hold every step's values
        lstm_cell(gates[t], prev_c, out=(hs[t], cs[t], tanh_cs[t]))
        prev_h, prev_c = hs[t], cs[t]
    return hs.transpose(1, 0, 2), (xt, h0, Wx, Wh, gates, cs, tanh_cs, hs)


def lstm_backward(dh, cache):
    """dh (N, T, H) upstream gradients of every hidden state
    -> dx (N, T, D), dh0 (N, H), dWx (D, 4H), dWh (H, 4H), db (4H,).
    """
    xt, h0, Wx, Wh, gates, cs, tanh_cs, hs = cache
    T, N, H = hs.shape
    dh_t = dh.transpose(1, 0, 2)  # (T, N, H) view
    das = np.empty_like(gates)  # (T, N, 4H)
    dprev_h = np.zeros_like(h0)
    dprev_c = np.zeros_like(h0)
    zeros = np.zeros_like(h0)
    for t in range(T - 1, -1, -1):
        dh_total = dh_t[t] + dprev_h
        prev_c = cs[t - 1] if t > 0 else zeros
        das[t], dc = lstm_gates_backward(dh_total, dprev_c, gates[t], tanh_cs[t], prev_c, H)
        dprev_c = dc * gates[t, :, H:2 * H]
        dprev_h = das[t] @ Wh.T
    da2 = das.reshape(T * N, 4 * H)
    dx = (da2 @ Wx.T).reshape(T, N, -1).transpose(1, 0, 2)
    dWx = xt.T @ da2
    dWh = h0.T @ das[0]
    if T > 1:
        dWh += hs[:-1].reshape((T - 1) * N, H).T @ das[1:].reshape((T - 1) * N, 4 * H)
    return dx, dprev_h, dWx, dWh, da2.sum(axis=0)
