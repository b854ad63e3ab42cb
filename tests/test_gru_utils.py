import numpy as np
import torch

from gru_utils import gru_backward, gru_forward, gru_step_backward, gru_step_forward
from tests.helpers import assert_gradients

TOL = 1e-7


def _params(rng, N=3, T=4, D=5, H=6):
    """x (N, T, D), h0 (N, H), Wx (D, 3H), Wh (H, 3H), b (3H,), bh (3H,) in float64."""
    return (rng.standard_normal((N, T, D)), rng.standard_normal((N, H)), 0.4 * rng.standard_normal((D, 3 * H)),
            0.4 * rng.standard_normal((H, 3 * H)), rng.standard_normal(3 * H), rng.standard_normal(3 * H))


def test_gru_step_gradients():
    rng = np.random.default_rng(0)
    x, h, Wx, Wh, b, bh = _params(rng)
    x = x[:, 0]
    dnext = rng.standard_normal(h.shape)
    _, cache = gru_step_forward(x, h, Wx, Wh, b, bh)
    assert_gradients(lambda: gru_step_forward(x, h, Wx, Wh, b, bh)[0], (x, h, Wx, Wh, b, bh),
                     gru_step_backward(dnext, cache), dnext, TOL)


def test_gru_sequence_gradients():
    rng = np.random.default_rng(1)
    x, h0, Wx, Wh, b, bh = _params(rng)
    dh = rng.standard_normal((3, 4, 6))
    _, cache = gru_forward(x, h0, Wx, Wh, b, bh)
    assert_gradients(lambda: gru_forward(x, h0, Wx, Wh, b, bh)[0], (x, h0, Wx, Wh, b, bh), gru_backward(dh, cache),
                     dh, TOL)


def test_gru_forward_equals_repeated_steps():
    rng = np.random.default_rng(2)
    x, h0, Wx, Wh, b, bh = _params(rng)
    h, _ = gru_forward(x, h0, Wx, Wh, b, bh)
    prev_h = h0
    for t in range(x.shape[1]):
        prev_h, _ = gru_step_forward(x[:, t], prev_h, Wx, Wh, b, bh)
        np.testing.assert_allclose(h[:, t], prev_h, rtol=1e-12)


def test_gru_matches_torch_gru_with_the_weights_copied_as_they_are():
    """Same gate order (r, z, n) and equations as nn.GRU: weight_ih = Wx.T, weight_hh = Wh.T,
    bias_ih = b, bias_hh = bh, with no reordering."""
    rng = np.random.default_rng(3)
    N, T, D, H = 4, 7, 5, 8
    x, h0, Wx, Wh, b, bh = _params(rng, N, T, D, H)
    dh = rng.standard_normal((N, T, H))
    h, cache = gru_forward(x, h0, Wx, Wh, b, bh)
    dx, dh0, dWx, dWh, db, dbh = gru_backward(dh, cache)

    ref = torch.nn.GRU(D, H, batch_first=True).double()
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.from_numpy(Wx.T))
        ref.weight_hh_l0.copy_(torch.from_numpy(Wh.T))
        ref.bias_ih_l0.copy_(torch.from_numpy(b))
        ref.bias_hh_l0.copy_(torch.from_numpy(bh))
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0[None], requires_grad=True)
    out, _ = ref(xt, h0t)
    out.backward(torch.from_numpy(dh))
    kw = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h, out.detach().numpy(), **kw)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **kw)
    np.testing.assert_allclose(dh0, h0t.grad[0].numpy(), **kw)
    np.testing.assert_allclose(dWx.T, ref.weight_ih_l0.grad.numpy(), **kw)
    np.testing.assert_allclose(dWh.T, ref.weight_hh_l0.grad.numpy(), **kw)
    np.testing.assert_allclose(db, ref.bias_ih_l0.grad.numpy(), **kw)
    np.testing.assert_allclose(dbh, ref.bias_hh_l0.grad.numpy(), **kw)
