"""The top-down ("Up-Down") captioning cell of Anderson et al. (2018) with hand-written forward and
backward passes: an attention LSTM that decides where to look and a language LSTM that writes.

Shape letters: N batch, T time, R image regions, D region feature, W word vector, A attention,
H hidden (both LSTMs). Equations (the paper's numbering), at step t:

    (3)    x1_t = [h2_{t-1}, v_bar, W_e x_t]                 v_bar = mean_i v_i, the mean region
           (h1_t, c1_t) = LSTM1(x1_t, h1_{t-1}, c1_{t-1})      gates i, f, o, g as lstm_utils.py
    (4)    a_{i,t} = w_a . tanh(W_va v_i + W_ha h1_t)
    (5)    alpha_t = softmax_i(a_t)                          (N, R), sums to 1 over the regions
           v_hat_t = sum_i alpha_{i,t} v_i
    (6)    x2_t = [v_hat_t, h1_t]
           (h2_t, c2_t) = LSTM2(x2_t, h2_{t-1}, c2_{t-1})    the word scores come from h2_t

Both LSTMs start from zero. LSTM1's input projection is split by its parts: W1h2 (H, 4H) of
h2_{t-1}, W1v (D, 4H) of v_bar, W1x (W, 4H) of the word, W1h (H, 4H) of h1_{t-1}, b1 (4H,); LSTM2's:
W2v (D, 4H) of v_hat, W2h1 (H, 4H) of h1_t, W2h (H, 4H) of h2_{t-1}, b2 (4H,); the attention's:
W_va (D, A), W_ha (H, A), w_a (A,). The LSTM equations are lstm_utils.lstm_cell and its backward,
the attention attention_lstm_utils.attention_forward and its backward: written once, shared.

The sequence functions project every region once (v W_va, before the loop), the mean region and
every word once (x W1x + v_bar W1v + b1), keep time-major buffers, and compute the weight gradients
as single products after the backward loop.
"""
import numpy as np

from attention_lstm_utils import attention_scores_backward, attention_forward
from lstm_utils import lstm_gates_backward, lstm_cell

WEIGHTS = ("W1x", "W1v", "W1h2", "W1h", "b1", "W_va", "W_ha", "w_a", "W2v", "W2h1", "W2h", "b2")


def updown_step_from_projection(xa1, v, v_proj, prev_h1, prev_c1, prev_h2, prev_c2, W1h2, W1h, W_ha,
                                w_a, W2v, W2h1, W2h, b2, mask=None):
    """One step after the projections that do not depend on the state (decoding looks the word's
    up and projects the regions once per caption).

    xa1 (N, 4H) = x W1x + v_bar W1v + b1, v (N, R, D), v_proj (N, R, A) = v W_va, prev_h1, prev_c1,
    prev_h2, prev_c2 (N, H), weights as in the module docstring, mask (N, R) bool or None (the
    image's own regions; padded ones get zero attention)
    -> h1, c1, h2, c2 (N, H), alpha (N, R), and the step's intermediate values (gates1, tanh_c1,
       context, gates2, tanh_c2, attention cache).
    """
    gates1 = xa1 + prev_h2 @ W1h2
    gates1 += prev_h1 @ W1h
    h1, c1, tanh_c1 = lstm_cell(gates1, prev_c1)  # (3)
    context, alpha, att_cache = attention_forward(v, v_proj, h1 @ W_ha, w_a, mask)  # (4), (5)
    gates2 = context @ W2v + h1 @ W2h1  # (6)
    gates2 += prev_h2 @ W2h
    gates2 += b2
    h2, c2, tanh_c2 = lstm_cell(gates2, prev_c2)
    return h1, c1, h2, c2, alpha, (gates1, tanh_c1, context, gates2, tanh_c2, att_cache)


def updown_forward(x, v, W1x, W1v, W1h2, W1h, b1, W_va, W_ha, w_a, W2v, W2h1, W2h, b2, mask=None):
    """Run the decoder over a whole sequence from zero states.

    x (N, T, W) word vectors, v (N, R, D) regions, weights as in the module docstring, mask (N, R)
    bool or None: the image's own regions (padded ones get zero attention and are left out of
    the mean region)
    -> h2 (N, T, H) the language LSTM's states (the word scores come from them), alpha (N, T, R),
       cache.
    """
    N, T, Wd = x.shape
    H = W1h.shape[0]
    dtype = np.result_type(x, W1h)
    xt = np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(T * N, Wd)
    weights = (np.full(v.shape[:2], 1 / v.shape[1], dtype=dtype) if mask is None
               else (mask / mask.sum(axis=1, keepdims=True)).astype(dtype))  # (N, R): the mean's
    v_bar = np.einsum("nr,nrd->nd", weights, v)  # (N, D), the mean of the image's own regions
    xa1 = (xt @ W1x).reshape(T, N, 4 * H)  # (T, N, 4H): every word's projection at once
    xa1 += v_bar @ W1v + b1  # the mean region's part, the same at every step
    v_proj = v @ W_va  # (N, R, A), once for every step
    h1s, c1s, h2s, c2s = (np.empty((T, N, H), dtype=dtype) for _ in range(4))
    alphas = np.empty((T, N, v.shape[1]), dtype=dtype)
    steps = []
    zeros = np.zeros((N, H), dtype=dtype)
    h1, c1, h2, c2 = zeros, zeros, zeros, zeros
    for t in range(T):
        h1, c1, h2, c2, alphas[t], inner = updown_step_from_projection(
            xa1[t], v, v_proj, h1, c1, h2, c2, W1h2, W1h, W_ha, w_a, W2v, W2h1, W2h, b2, mask)
        h1s[t], c1s[t], h2s[t], c2s[t] = h1, c1, h2, c2
        steps.append(inner)
    cache = (xt, v, v_bar, weights, W1x, W1v, W1h2, W1h, W_va, W_ha, W2v, W2h1, W2h, h1s, c1s, h2s,
             c2s, alphas, steps)
    return h2s.transpose(1, 0, 2), alphas.transpose(1, 0, 2), cache


def updown_backward(dh2, cache):
    """dh2 (N, T, H) upstream gradients of the language LSTM's states
    -> dx (N, T, W), dv (N, R, D), then the weights' gradients in WEIGHTS order."""
    xt, v, v_bar, weights, W1x, W1v, W1h2, W1h, W_va, W_ha, W2v, W2h1, W2h, h1s, c1s, h2s, c2s, \
        alphas, steps = cache
    T, N, H = h2s.shape
    R, D = v.shape[1:]
    A = W_va.shape[1]
    dh2_t = dh2.transpose(1, 0, 2)  # (T, N, H) view
    dg1s = np.empty((T, N, 4 * H), dtype=h2s.dtype)  # gate gradients of LSTM1, every step
    dg2s = np.empty((T, N, 4 * H), dtype=h2s.dtype)  # and of LSTM2
    dh_projs = np.empty((T, N, A), dtype=h2s.dtype)  # of h1_t W_ha
    dcontexts = np.empty((T, N, D), dtype=h2s.dtype)
    dv_proj = np.zeros((N, R, A), dtype=h2s.dtype)
    dw_a = np.zeros(A, dtype=h2s.dtype)
    zeros = np.zeros((N, H), dtype=h2s.dtype)
    dh1_next, dc1_next, dh2_next, dc2_next = zeros, zeros, zeros, zeros
    for t in range(T - 1, -1, -1):
        gates1, tanh_c1, context, gates2, tanh_c2, att_cache = steps[t]
        prev_c1 = c1s[t - 1] if t > 0 else zeros
        prev_c2 = c2s[t - 1] if t > 0 else zeros
        # the language LSTM (6), from its state's gradient: the loss's and the next step's
        dg2s[t], dc2 = lstm_gates_backward(dh2_t[t] + dh2_next, dc2_next, gates2, tanh_c2, prev_c2, H)
        dc2_next = dc2 * gates2[:, H:2 * H]
        np.matmul(dg2s[t], W2v.T, out=dcontexts[t])
        # the attention (4), (5): through alpha to h1_t (the weighted sum's dv comes after the loop)
        dpre, dh_projs[t], dw = attention_scores_backward(dcontexts[t], None, att_cache)
        dv_proj += dpre
        dw_a += dw
        # the attention LSTM (3): h1_t feeds LSTM2, the attention and the next step of LSTM1
        dh1 = dg2s[t] @ W2h1.T + dh_projs[t] @ W_ha.T + dh1_next
        dg1s[t], dc1 = lstm_gates_backward(dh1, dc1_next, gates1, tanh_c1, prev_c1, H)
        dc1_next = dc1 * gates1[:, H:2 * H]
        dh1_next = dg1s[t] @ W1h.T
        dh2_next = dg2s[t] @ W2h.T + dg1s[t] @ W1h2.T  # h2_{t-1} fed both LSTMs
    dg1 = dg1s.reshape(T * N, 4 * H)
    dg2 = dg2s.reshape(T * N, 4 * H)
    dx = (dg1 @ W1x.T).reshape(T, N, -1).transpose(1, 0, 2)
    # the states each product took, step by step: h_{t-1} (zero at t = 0) and h1_t
    prev_h1 = np.concatenate([zeros[None], h1s[:-1]]).reshape(T * N, H)
    prev_h2 = np.concatenate([zeros[None], h2s[:-1]]).reshape(T * N, H)
    contexts = np.stack([s[2] for s in steps]).reshape(T * N, D)
    dg1_sum = dg1s.sum(axis=0)  # (N, 4H): v_bar enters every step the same way
    # the regions: the attention's weighted sum, their projection, and the mean region
    dv = np.matmul(alphas.transpose(1, 2, 0), dcontexts.transpose(1, 0, 2))  # (N, R, D)
    dv += dv_proj @ W_va.T
    dv += weights[:, :, None] * (dg1_sum @ W1v.T)[:, None, :]  # the mean region's share
    return (dx, dv, xt.T @ dg1, v_bar.T @ dg1_sum, prev_h2.T @ dg1, prev_h1.T @ dg1,
            dg1.sum(axis=0), v.reshape(-1, D).T @ dv_proj.reshape(-1, A),
            h1s.reshape(T * N, H).T @ dh_projs.reshape(T * N, A), dw_a, contexts.T @ dg2,
            h1s.reshape(T * N, H).T @ dg2, prev_h2.T @ dg2, dg2.sum(axis=0))
