"""GRU cell with hand-written forward and backward passes, with the gates and equations of
torch.nn.GRU.

Shape letters: N batch, T time, D input, H hidden.
Wx (D, 3H), Wh (H, 3H), b (3H,) the input bias, bh (3H,) the hidden bias; the 3H axis holds
the gates in torch's order reset, update, new (r, z, n), so that nn.GRU's weight_ih_l0 = Wx.T,
weight_hh_l0 = Wh.T, bias_ih_l0 = b, bias_hh_l0 = bh:

    xa = x Wx + b;  ha = h_{t-1} Wh + bh
    r = sigmoid(xa_r + ha_r);  z = sigmoid(xa_z + ha_z)
    n = tanh(xa_n + r * ha_n)
    h_t = (1 - z) * n + z * h_{t-1}

The whole-sequence functions use time-major buffers, one matrix product for all input
projections before the loop, and single matrix products for the weight gradients after it.
"""
import numpy as np

from core.layers.rnn_layers import sigmoid


def gru_step_from_projection(xa, prev_h, Wh, bh):
    """The GRU step after its input projection xa = x Wx + b (decoding looks it up per word).

    xa (N, 3H), prev_h (N, H), Wh (H, 3H), bh (3H,)
    -> next_h (N, H), gates (N, 3H) holding r, z, n, ha_n (N, H) = prev_h Wh_n + bh_n.
    """
    H = prev_h.shape[1]
    ha = prev_h @ Wh + bh  # (N, 3H)
    gates = np.empty_like(xa)
    np.add(xa[:, :2 * H], ha[:, :2 * H], out=gates[:, :2 * H])
    sigmoid(gates[:, :2 * H], out=gates[:, :2 * H])
    ha_n = ha[:, 2 * H:]
    n = gates[:, 2 * H:]
    np.multiply(gates[:, :H], ha_n, out=n)
    n += xa[:, 2 * H:]
    np.tanh(n, out=n)
    z = gates[:, H:2 * H]
    next_h = prev_h - n
    next_h *= z
    next_h += n
    return next_h, gates, ha_n


def _gates_backward(dh, prev_h, gates, ha_n, H):
    """Gradients of one step's pre-activations.

    dh (N, H) total gradient of h_t, prev_h (N, H), gates (N, 3H), ha_n (N, H)
    -> dxa (N, 3H) of x Wx + b, dha (N, 3H) of h_{t-1} Wh + bh, dprev_h_direct (N, H) = dh * z.
    """
    r, z, n = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:]
    dxa = np.empty_like(gates)
    dan = dxa[:, 2 * H:]  # d(pre-activation of n)
    np.multiply(dh, 1 - z, out=dan)
    dan *= 1 - n * n
    dr = dan * ha_n
    np.multiply(dr, r * (1 - r), out=dxa[:, :H])
    np.multiply(dh, prev_h - n, out=dxa[:, H:2 * H])
    dxa[:, H:2 * H] *= z * (1 - z)
    dha = dxa.copy()
    dha[:, 2 * H:] *= r
    return dxa, dha, dh * z


def gru_step_forward(x, prev_h, Wx, Wh, b, bh):
    """One GRU step.

    x (N, D), prev_h (N, H), Wx (D, 3H), Wh (H, 3H), b (3H,), bh (3H,) -> next_h (N, H), cache.
    """
    next_h, gates, ha_n = gru_step_from_projection(x @ Wx + b, prev_h, Wh, bh)
    return next_h, (x, prev_h, Wx, Wh, gates, ha_n)


def gru_step_backward(dnext_h, cache):
    """dnext_h (N, H) -> dx (N, D), dprev_h (N, H), dWx (D, 3H), dWh (H, 3H), db (3H,), dbh
    (3H,)."""
    x, prev_h, Wx, Wh, gates, ha_n = cache
    dxa, dha, dprev_h = _gates_backward(dnext_h, prev_h, gates, ha_n, prev_h.shape[1])
    dprev_h += dha @ Wh.T
    return dxa @ Wx.T, dprev_h, x.T @ dxa, prev_h.T @ dha, dxa.sum(axis=0), dha.sum(axis=0)


def gru_forward(x, h0, Wx, Wh, b, bh):
    """Run the GRU over a whole sequence, starting from h0.

    x (N, T, D), h0 (N, H), Wx (D, 3H), Wh (H, 3H), b (3H,), bh (3H,) -> h (N, T, H), cache.
    """
    N, T, D = x.shape
    H = h0.shape[1]
    xt = np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(T * N, D)
    xas = (xt @ Wx).reshape(T, N, 3 * H)  # (T, N, 3H): input projections of every step
    xas += b
    gates = np.empty_like(xas)
    ha_ns = np.empty((T, N, H), dtype=xas.dtype)
    hs = np.empty_like(ha_ns)
    prev_h = h0
    for t in range(T):
        hs[t], gates[t], ha_ns[t] = gru_step_from_projection(xas[t], prev_h, Wh, bh)
        prev_h = hs[t]
    return hs.transpose(1, 0, 2), (xt, h0, Wx, Wh, gates, ha_ns, hs)


def gru_backward(dh, cache):
    """dh (N, T, H) upstream gradients of every hidden state
    -> dx (N, T, D), dh0 (N, H), dWx (D, 3H), dWh (H, 3H), db (3H,), dbh (3H,).
    """
    xt, h0, Wx, Wh, gates, ha_ns, hs = cache
    T, N, H = hs.shape
    dh_t = dh.transpose(1, 0, 2)  # (T, N, H) view
    dxas = np.empty_like(gates)  # (T, N, 3H)
    dhas = np.empty_like(gates)
    dprev_h = np.zeros_like(h0)
    for t in range(T - 1, -1, -1):
        prev_h = hs[t - 1] if t > 0 else h0
        dxas[t], dhas[t], dprev_h = _gates_backward(dh_t[t] + dprev_h, prev_h, gates[t], ha_ns[t],
                                                    H)
        dprev_h += dhas[t] @ Wh.T
    dxa2, dha2 = dxas.reshape(T * N, 3 * H), dhas.reshape(T * N, 3 * H)
    dx = (dxa2 @ Wx.T).reshape(T, N, -1).transpose(1, 0, 2)
    dWh = h0.T @ dhas[0]
    if T > 1:
        dWh += hs[:-1].reshape((T - 1) * N, H).T @ dhas[1:].reshape((T - 1) * N, 3 * H)
    return dx, dprev_h, xt.T @ dxa2, dWh, dxa2.sum(axis=0), dha2.sum(axis=0)
