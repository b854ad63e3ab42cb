"""Soft-attention LSTM cell ("Show, Attend and Tell", Xu et al. 2015) with hand-written forward and
backward passes.

Shape letters: N batch, T time, R image regions, D region feature, W word vector, A attention,
H hidden. At each step the previous hidden state chooses where to look:

    e_ti  = w_att . tanh(a_i W_att_a + b_att + h_{t-1} W_att_h)      additive attention, per region
    alpha_t = softmax_i(e_t)                                          (N, R), sums to 1 over regions
    z_t   = beta_t * sum_i alpha_ti a_i,  beta_t = sigmoid(h_{t-1} . w_beta + b_beta)   gated
    context (h_t, c_t) = LSTM(x_t Wx + z_t Wz + h_{t-1} Wh + b)                gates i, f, o, g as
    lstm_utils.py

a (N, R, D) regions, x (N, T, W) word vectors; Wx (W, 4H), Wz (D, 4H), Wh (H, 4H), b (4H,),
W_att_a (D, A), b_att (A,), W_att_h (H, A), w_att (A,), w_beta (H,), b_beta (1,).

The whole-sequence functions project every region once (a W_att_a, before the loop) and every
word once (x Wx + b), do one product of h_{t-1} with [Wh | W_att_h | w_beta] per step (the only
per-step work that depends on h besides the attention itself), keep time-major buffers, and
compute the weight gradients as single products after the backward loop.
"""
import numpy as np

from core.layers.rnn_layers import sigmoid
from lstm_utils import lstm_gates_backward, lstm_cell, lstm_step_from_projection

WEIGHTS = ("Wx", "Wz", "Wh", "b", "W_att_a", "b_att", "W_att_h", "w_att", "w_beta", "b_beta")


def attention_forward(a, a_proj, h_proj, w_att, mask=None):
    """Soft attention over regions from a projected hidden state (no gate).

    a (N, R, D) regions, a_proj (N, R, A) = a W_att_a + b_att, h_proj (N, A) = h W_att_h,
    w_att (A,), mask (N, R) bool or None: which regions are an image's own (the rest pad a batch of
    images with fewer regions: they get exactly zero attention, so zero gradient too)
    -> context (N, D) = sum_i alpha_i a_i, alpha (N, R), cache.
    """
    u = np.tanh(a_proj + h_proj[:, None, :])  # (N, R, A)
    e = u @ w_att  # (N, R)
    if mask is not None:
        e = np.where(mask, e, -np.inf)  # exp(-inf) = 0: a padded region's weight
    e -= e.max(axis=1, keepdims=True)
    alpha = np.exp(e)
    alpha /= alpha.sum(axis=1, keepdims=True)
    context = np.einsum("nr,nrd->nd", alpha, a)  # (N, D)
    return context, alpha, (a, u, alpha, w_att)


def attention_backward(dcontext, dalpha, cache):
    """dcontext (N, D), dalpha (N, R) gradient reaching alpha directly (the attention penalty), or
    None
    -> da (N, R, D), da_proj (N, R, A), dh_proj (N, A), dw_att (A,)."""
    a, _, alpha, _ = cache
    da = alpha[:, :, None] * dcontext[:, None, :]  # (N, R, D) through the weighted sum
    return (da, *attention_scores_backward(dcontext, dalpha, cache))


def attention_scores_backward(dcontext, dalpha, cache):
    """The part of attention_backward that goes through alpha (everything but the weighted sum's
    gradient of a) -> da_proj (N, R, A), dh_proj (N, A), dw_att (A,)."""
    a, u, alpha, w_att = cache
    dal = np.einsum("nd,nrd->nr", dcontext, a)  # (N, R)
    if dalpha is not None:
        dal += dalpha
    de = alpha * (dal - (alpha * dal).sum(axis=1, keepdims=True))  # softmax backward
    dpre = de[:, :, None] * w_att * (1 - u * u)  # (N, R, A)
    return dpre, dpre.sum(axis=1), np.einsum("nra,nr->a", u, de)


def att_lstm_step_forward(x, a, prev_h, prev_c, Wx, Wz, Wh, b, W_att_a, b_att, W_att_h, w_att,
                          w_beta, b_beta):
    """One step, from the regions themselves (the CS231n-style reference API; the model runs
    att_lstm_forward and, when decoding, att_lstm_step_from_projection; tests check both against
    this).

    x (N, W), a (N, R, D), prev_h (N, H), prev_c (N, H), weights as in the module docstring
    -> next_h (N, H), next_c (N, H), alpha (N, R), cache.
    """
    a_proj = a @ W_att_a + b_att  # (N, R, A)
    context, alpha, att_cache = attention_forward(a, a_proj, prev_h @ W_att_h, w_att)
    beta = sigmoid(prev_h @ w_beta + b_beta)  # (N,)
    z = beta[:, None] * context  # (N, D)
    next_h, next_c, gates, tanh_c = lstm_step_from_projection(x @ Wx + z @ Wz + b, prev_h, prev_c,
                                                              Wh)
    cache = (x, a, prev_h, prev_c, Wx, Wz, Wh, W_att_a, W_att_h, w_beta, att_cache, context, beta,
             z, gates, tanh_c)
    return next_h, next_c, alpha, cache


def att_lstm_step_backward(dnext_h, dnext_c, dalpha, cache):
    """dnext_h (N, H), dnext_c (N, H), dalpha (N, R) or None
    -> dx (N, W), da (N, R, D), dprev_h (N, H), dprev_c (N, H), then the weights' gradients in
       WEIGHTS order: dWx, dWz, dWh, db, dW_att_a, db_att, dW_att_h, dw_att, dw_beta, db_beta."""
    (x, a, prev_h, prev_c, Wx, Wz, Wh, W_att_a, W_att_h, w_beta, att_cache, context, beta, z, gates,
     tanh_c) = cache
    H = prev_h.shape[1]
    dg, dc = lstm_gates_backward(dnext_h, dnext_c, gates, tanh_c, prev_c, H)  # (N, 4H), (N, H)
    dz = dg @ Wz.T  # (N, D)
    dbeta_pre = (dz * context).sum(axis=1) * beta * (1 - beta)  # (N,)
    da, da_proj, dh_proj, dw_att = attention_backward(dz * beta[:, None], dalpha, att_cache)
    da += da_proj @ W_att_a.T
    dprev_h = dg @ Wh.T + dh_proj @ W_att_h.T + dbeta_pre[:, None] * w_beta
    R, D = a.shape[1:]
    return (dg @ Wx.T, da, dprev_h, dc * gates[:, H:2 * H], x.T @ dg, z.T @ dg, prev_h.T @ dg,
            dg.sum(axis=0),
            a.reshape(-1, D).T @ da_proj.reshape(-1, da_proj.shape[2]), da_proj.sum(axis=(0, 1)),
            prev_h.T @ dh_proj, dw_att, prev_h.T @ dbeta_pre, dbeta_pre.sum(keepdims=True))


def att_lstm_step_from_projection(xa, a, a_proj, prev_h, prev_c, Wz, Wh_cat, bh_cat, w_att,
                                  mask=None):
    """The step after the projections that do not depend on h (decoding looks xa up per word and
    projects the regions once per caption).

    xa (N, 4H) = x Wx + b, a (N, R, D), a_proj (N, R, A) = a W_att_a + b_att, prev_h (N, H),
    prev_c (N, H), Wz (D, 4H), Wh_cat (H, 4H + A + 1) and bh_cat (4H + A + 1,) from
    `stack_h_weights`, w_att (A,)
    -> next_h (N, H), next_c (N, H), alpha (N, R), and the step's intermediate values
       (context (N, D), beta (N,), z (N, D), gates (N, 4H), tanh_c (N, H), attention cache).
    """
    H = prev_h.shape[1]
    h_all = prev_h @ Wh_cat  # (N, 4H + A + 1): gate part, attention part, gate scalar
    h_all += bh_cat
    context, alpha, att_cache = attention_forward(a, a_proj, h_all[:, 4 * H:-1], w_att, mask)
    beta = sigmoid(h_all[:, -1])  # (N,)
    z = beta[:, None] * context  # (N, D)
    gates = h_all[:, :4 * H] + xa
    gates += z @ Wz
    # the LSTM's equations, as lstm_utils.py writes them
    next_h, next_c, tanh_c = lstm_cell(gates, prev_c)
    return next_h, next_c, alpha, (context, beta, z, gates, tanh_c, att_cache)


def stack_h_weights(Wh, W_att_h, w_beta, b_beta):
    """-> (Wh_cat (H, 4H + A + 1), bias (4H + A + 1,)): every product with h_{t-1} as one, the gate
    scalar's bias in the last column (zeros elsewhere: b sits with the word projection)."""
    Wh_cat = np.concatenate([Wh, W_att_h, w_beta[:, None]], axis=1)
    bias = np.zeros(Wh_cat.shape[1], dtype=Wh_cat.dtype)
    bias[-1] = b_beta[0]
    return Wh_cat, bias


def att_lstm_forward(x, a, h0, c0, Wx, Wz, Wh, b, W_att_a, b_att, W_att_h, w_att, w_beta, b_beta,
                     mask=None):
    """Run the cell over a whole sequence from (h0, c0).

    x (N, T, W), a (N, R, D), h0 (N, H), c0 (N, H), weights as in the module docstring, mask
    (N, R) bool or None (attention_forward's: padded regions get zero attention)
    -> h (N, T, H), alpha (N, T, R), cache.
    """
    N, T, Wd = x.shape
    H = h0.shape[1]
    xt = np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(T * N, Wd)
    xa = (xt @ Wx).reshape(T, N, 4 * H)  # (T, N, 4H), all words' projections at once
    xa += b
    a_proj = a @ W_att_a + b_att  # (N, R, A), once for every step
    Wh_cat, bh_cat = stack_h_weights(Wh, W_att_h, w_beta, b_beta)
    hs, cs = np.empty((T, N, H), dtype=xa.dtype), np.empty((T, N, H), dtype=xa.dtype)
    alphas = np.empty((T, N, a.shape[1]), dtype=xa.dtype)
    steps = []
    prev_h, prev_c = h0, c0
    for t in range(T):
        hs[t], cs[t], alphas[t], inner = att_lstm_step_from_projection(
            xa[t], a, a_proj, prev_h, prev_c, Wz, Wh_cat, bh_cat, w_att, mask)
        steps.append(inner)
        prev_h, prev_c = hs[t], cs[t]
    cache = (xt, a, h0, c0, Wx, Wz, W_att_a, Wh_cat, w_att, hs, cs, alphas, steps)
    return hs.transpose(1, 0, 2), alphas.transpose(1, 0, 2), cache


def att_lstm_backward(dh, dalpha, cache):
    """dh (N, T, H) upstream gradients of every hidden state, dalpha (N, T, R) of every attention
    map (the attention penalty) or None
    -> dx (N, T, W), da (N, R, D), dh0 (N, H), dc0 (N, H), then the weights' gradients in WEIGHTS
    order.
    """
    xt, a, h0, c0, Wx, Wz, W_att_a, Wh_cat, w_att, hs, cs, alphas, steps = cache
    T, N, H = hs.shape
    R, D = a.shape[1:]
    A = W_att_a.shape[1]
    dh_t = dh.transpose(1, 0, 2)  # (T, N, H) view
    dh_all = np.empty((T, N, Wh_cat.shape[1]), dtype=hs.dtype)  # gradients of every h_{t-1} product
    dcontexts = np.empty((T, N, D), dtype=hs.dtype)
    da_proj = np.zeros((N, R, A), dtype=hs.dtype)
    dw_att = np.zeros(A, dtype=hs.dtype)
    dprev_h, dprev_c = np.zeros_like(h0), np.zeros_like(c0)
    for t in range(T - 1, -1, -1):
        context, beta, z, gates, tanh_c, att_cache = steps[t]
        prev_c = cs[t - 1] if t > 0 else c0
        dg, dc = lstm_gates_backward(dh_t[t] + dprev_h, dprev_c, gates, tanh_c, prev_c, H)
        dh_all[t, :, :4 * H] = dg
        dz = dg @ Wz.T  # (N, D)
        dh_all[t, :, -1] = (dz * context).sum(axis=1) * beta * (1 - beta)
        np.multiply(dz, beta[:, None], out=dcontexts[t])
        dpre, dh_all[t, :, 4 * H:-1], dw = attention_scores_backward(
            dcontexts[t], None if dalpha is None else dalpha[:, t], att_cache)
        da_proj += dpre
        dw_att += dw
        dprev_h = dh_all[t] @ Wh_cat.T
        dprev_c = dc * gates[:, H:2 * H]
    dg_all = dh_all[:, :, :4 * H].reshape(T * N, 4 * H)
    dx = (dg_all @ Wx.T).reshape(T, N, -1).transpose(1, 0, 2)
    # the regions: through the attention weights of every step (one batched product) and the
    # projection
    da = np.matmul(alphas.transpose(1, 2, 0), dcontexts.transpose(1, 0, 2))  # (N, R, D)
    da += da_proj @ W_att_a.T
    prev_hs = np.concatenate([h0[None], hs[:-1]]).reshape(T * N, H)
    dWh_cat = prev_hs.T @ dh_all.reshape(T * N, -1)  # (H, 4H + A + 1)
    zs = np.stack([s[2] for s in steps]).reshape(T * N, D)
    return (dx, da, dprev_h, dprev_c, xt.T @ dg_all, zs.T @ dg_all, dWh_cat[:, :4 * H],
            dg_all.sum(axis=0),
            a.reshape(-1, D).T @ da_proj.reshape(-1, A), da_proj.sum(axis=(0, 1)),
            dWh_cat[:, 4 * H:-1], dw_att,
            dWh_cat[:, -1], dh_all[:, :, -1].sum(keepdims=True).reshape(1))
