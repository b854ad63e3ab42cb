import numpy as np
import torch

from lstm_utils import lstm_backward, lstm_forward, lstm_step_backward, lstm_step_forward
from tests.helpers import assert_gradients

TOL = 1e-7


def _params(rng, N=3, T=4, D=5, H=6):
    return (rng.standard_normal((N, T, D)), rng.standard_normal((N, H)), 0.4 * rng.standard_normal((D, 4 * H)),
            0.4 * rng.standard_normal((H, 4 * H)), rng.standard_normal(4 * H))


def test_lstm_step_gradients():
    rng = np.random.default_rng(0)
    x, h, Wx, Wh, b = _params(rng)
    x = x[:, 0]
    c = rng.standard_normal(h.shape)
    dh, dc = rng.standard_normal(h.shape), rng.standard_normal(h.shape)
    _, _, cache = lstm_step_forward(x, h, c, Wx, Wh, b)
    grads = lstm_step_backward(dh, dc, cache)

    def both():
        next_h, next_c, _ = lstm_step_forward(x, h, c, Wx, Wh, b)
        return np.concatenate([next_h, next_c])

    assert_gradients(both, (x, h, c, Wx, Wh, b), grads, np.concatenate([dh, dc]), TOL)


def test_lstm_sequence_gradients():
    rng = np.random.default_rng(1)
    x, h0, Wx, Wh, b = _params(rng)
    dh = rng.standard_normal((3, 4, 6))
    _, cache = lstm_forward(x, h0, Wx, Wh, b)
    assert_gradients(lambda: lstm_forward(x, h0, Wx, Wh, b)[0], (x, h0, Wx, Wh, b), lstm_backward(dh, cache), dh,
                     TOL)


def test_lstm_forward_equals_repeated_steps():
    rng = np.random.default_rng(2)
    x, h0, Wx, Wh, b = _params(rng)
    h, _ = lstm_forward(x, h0, Wx, Wh, b)
    prev_h, prev_c = h0, np.zeros_like(h0)
    for t in range(x.shape[1]):
        prev_h, prev_c, _ = lstm_step_forward(x[:, t], prev_h, prev_c, Wx, Wh, b)
        np.testing.assert_allclose(h[:, t], prev_h, rtol=1e-12)


def _to_torch_gates(w, H):
    """Our gate order (i, f, o, g) -> torch's (i, f, g, o) along axis 0."""
    i, f, o, g = np.split(w, 4, axis=0)
    return np.concatenate([i, f, g, o], axis=0)


def test_lstm_matches_torch_lstm_forward_and_gradients():
    rng = np.random.default_rng(3)
    N, T, D, H = 4, 7, 5, 8
    x, h0, Wx, Wh, b = _params(rng, N, T, D, H)
    dh = rng.standard_normal((N, T, H))
    h, cache = lstm_forward(x, h0, Wx, Wh, b)
    dx, dh0, dWx, dWh, db = lstm_backward(dh, cache)

    ref = torch.nn.LSTM(D, H, batch_first=True).double()
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.from_numpy(_to_torch_gates(Wx.T, H)))
        ref.weight_hh_l0.copy_(torch.from_numpy(_to_torch_gates(Wh.T, H)))
        ref.bias_ih_l0.copy_(torch.from_numpy(_to_torch_gates(b, H)))
        ref.bias_hh_l0.zero_()
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0[None], requires_grad=True)
    out, _ = ref(xt, (h0t, torch.zeros(1, N, H, dtype=torch.float64)))
    out.backward(torch.from_numpy(dh))
    kw = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h, out.detach().numpy(), **kw)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **kw)
    np.testing.assert_allclose(dh0, h0t.grad[0].numpy(), **kw)
    np.testing.assert_allclose(_to_torch_gates(dWx.T, H), ref.weight_ih_l0.grad.numpy(), **kw)
    np.testing.assert_allclose(_to_torch_gates(dWh.T, H), ref.weight_hh_l0.grad.numpy(), **kw)
    np.testing.assert_allclose(_to_torch_gates(db, H), ref.bias_ih_l0.grad.numpy(), **kw)
