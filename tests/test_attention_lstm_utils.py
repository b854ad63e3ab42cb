import numpy as np
import torch

from attention_lstm_utils import (
    WEIGHTS, att_lstm_backward, att_lstm_forward, att_lstm_step_backward, att_lstm_step_forward, attention_backward,
    attention_forward)
from benchmarks.bench_decoders import torch_attention_lstm
from tests.helpers import assert_gradients

TOL = 1e-7


def _inputs(rng, N=3, T=4, R=5, D=6, W=4, A=7, H=5):
    """x (N, T, W), a (N, R, D), h0, c0 (N, H) and the weights in WEIGHTS order, float64."""
    weights = {"Wx": (W, 4 * H), "Wz": (D, 4 * H), "Wh": (H, 4 * H), "b": (4 * H,), "W_att_a": (D, A),
               "b_att": (A,), "W_att_h": (H, A), "w_att": (A,), "w_beta": (H,), "b_beta": (1,)}
    params = [0.5 * rng.standard_normal(weights[k]) for k in WEIGHTS]
    return (rng.standard_normal((N, T, W)), rng.standard_normal((N, R, D)), 0.5 * rng.standard_normal((N, H)),
            0.5 * rng.standard_normal((N, H)), params)


def test_attention_gradients():
    rng = np.random.default_rng(0)
    N, R, D, A = 3, 5, 4, 6
    a, a_proj = rng.standard_normal((N, R, D)), rng.standard_normal((N, R, A))
    h_proj, w_att = rng.standard_normal((N, A)), rng.standard_normal(A)
    dctx, dalpha = rng.standard_normal((N, D)), rng.standard_normal((N, R))
    _, _, cache = attention_forward(a, a_proj, h_proj, w_att)

    def both():
        ctx, alpha, _ = attention_forward(a, a_proj, h_proj, w_att)
        return np.concatenate([ctx, alpha], axis=1)

    assert_gradients(both, (a, a_proj, h_proj, w_att), attention_backward(dctx, dalpha, cache),
                     np.concatenate([dctx, dalpha], axis=1), TOL)


def test_attention_weights_are_a_softmax_over_regions():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 5, 3))
    ctx, alpha, _ = attention_forward(a, 50 * rng.standard_normal((2, 5, 4)), np.zeros((2, 4)), rng.standard_normal(4))
    np.testing.assert_allclose(alpha.sum(axis=1), 1, rtol=1e-12)
    np.testing.assert_allclose(ctx, np.einsum("nr,nrd->nd", alpha, a), rtol=1e-12)


def test_step_gradients():
    rng = np.random.default_rng(2)
    x, a, h, c, params = _inputs(rng)
    x = x[:, 0]
    dh, dc, dalpha = rng.standard_normal(h.shape), rng.standard_normal(c.shape), rng.standard_normal(a.shape[:2])
    *_, cache = att_lstm_step_forward(x, a, h, c, *params)

    def outputs():
        next_h, next_c, alpha, _ = att_lstm_step_forward(x, a, h, c, *params)
        return np.concatenate([next_h, next_c, alpha], axis=1)

    assert_gradients(outputs, (x, a, h, c, *params), att_lstm_step_backward(dh, dc, dalpha, cache),
                     np.concatenate([dh, dc, dalpha], axis=1), TOL)


def test_sequence_gradients_with_and_without_an_attention_gradient():
    """Breaks caught: a step's regions' gradient through alpha dropped, the gate scalar's or the
    projection's share of dh_{t-1} dropped, the penalty's dalpha ignored."""
    rng = np.random.default_rng(3)
    x, a, h0, c0, params = _inputs(rng)
    N, T, R = x.shape[0], x.shape[1], a.shape[1]
    dh, dalpha = rng.standard_normal((N, T, h0.shape[1])), rng.standard_normal((N, T, R))
    _, _, cache = att_lstm_forward(x, a, h0, c0, *params)

    def outputs():
        h, alpha, _ = att_lstm_forward(x, a, h0, c0, *params)
        return np.concatenate([h, alpha], axis=2)

    assert_gradients(outputs, (x, a, h0, c0, *params), att_lstm_backward(dh, dalpha, cache),
                     np.concatenate([dh, dalpha], axis=2), TOL)
    without = att_lstm_backward(dh, None, cache)
    assert_gradients(lambda: att_lstm_forward(x, a, h0, c0, *params)[0], (x, a, h0, c0, *params), without, dh, TOL)


def test_sequence_equals_repeated_steps():
    rng = np.random.default_rng(4)
    x, a, h0, c0, params = _inputs(rng)
    h, alpha, _ = att_lstm_forward(x, a, h0, c0, *params)
    prev_h, prev_c = h0, c0
    for t in range(x.shape[1]):
        prev_h, prev_c, step_alpha, _ = att_lstm_step_forward(x[:, t], a, prev_h, prev_c, *params)
        np.testing.assert_allclose(h[:, t], prev_h, rtol=1e-12)
        np.testing.assert_allclose(alpha[:, t], step_alpha, rtol=1e-12)


def test_matches_the_same_equations_in_torch_autograd():
    rng = np.random.default_rng(5)
    x, a, h0, c0, params = _inputs(rng, N=4, T=6, R=9, D=5, W=3, A=4, H=6)
    dh, dalpha = rng.standard_normal((4, 6, 6)), rng.standard_normal((4, 6, 9))
    h, alpha, cache = att_lstm_forward(x, a, h0, c0, *params)
    grads = att_lstm_backward(dh, dalpha, cache)
    inputs = [torch.tensor(v, requires_grad=True) for v in (x, a, h0, c0, *params)]
    th, talpha = torch_attention_lstm(*inputs[:4], dict(zip(WEIGHTS, inputs[4:])))
    ((th * torch.tensor(dh)).sum() + (talpha * torch.tensor(dalpha)).sum()).backward()
    np.testing.assert_allclose(h, th.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(alpha, talpha.detach().numpy(), rtol=1e-10, atol=1e-12)
    for name, mine, theirs in zip(("x", "a", "h0", "c0") + WEIGHTS, grads, inputs):
        np.testing.assert_allclose(mine, theirs.grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=name)


def test_masked_attention_gradients_with_padded_regions():
    """Break caught: padded regions weighted by the attention (or their gradient nonzero) when a
    batch pads images of fewer regions."""
    rng = np.random.default_rng(11)
    x, a, h0, c0, params = _inputs(rng)
    mask = np.ones(a.shape[:2], dtype=bool)
    mask[0, 3:], mask[2, 1:] = False, False  # image 0 has 3 regions, image 2 one
    a[~mask] = 30 * rng.standard_normal((int((~mask).sum()), a.shape[2]))
    args = [x, a, h0, c0, *params]
    dh, dalpha = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    _, alpha, cache = att_lstm_forward(*args, mask=mask)
    assert (alpha[~np.repeat(mask[:, None], 4, axis=1)] == 0).all()
    np.testing.assert_allclose(alpha.sum(axis=2), 1.0)
    grads = att_lstm_backward(dh, dalpha, cache)
    assert (grads[1][~mask] == 0).all()  # nothing reaches a padded region

    def both():
        h, alpha, _ = att_lstm_forward(*args, mask=mask)
        return np.concatenate([h, alpha], axis=2)

    assert_gradients(both, args, grads, np.concatenate([dh, dalpha], axis=2), TOL)
