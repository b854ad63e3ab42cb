import numpy as np
import torch

from rnn_utils import (
    rnn_backward,
    rnn_forward,
    rnn_step_backward,
    rnn_step_forward,
    word_embedding_backward,
    word_embedding_forward,
)
from tests.helpers import assert_gradients, numeric_gradient, rel_error

TOL = 1e-7


def _params(rng, N=3, T=4, D=5, H=6):
    return (rng.standard_normal((N, T, D)), rng.standard_normal((N, H)), 0.4 * rng.standard_normal((D, H)),
            0.4 * rng.standard_normal((H, H)), rng.standard_normal(H))


def test_rnn_step_gradients():
    rng = np.random.default_rng(0)
    x, h, Wx, Wh, b = _params(rng)
    x = x[:, 0]
    dnext = rng.standard_normal(h.shape)
    _, cache = rnn_step_forward(x, h, Wx, Wh, b)
    assert_gradients(lambda: rnn_step_forward(x, h, Wx, Wh, b)[0], (x, h, Wx, Wh, b),
                     rnn_step_backward(dnext, cache), dnext, TOL)


def test_rnn_sequence_gradients():
    rng = np.random.default_rng(1)
    x, h0, Wx, Wh, b = _params(rng)
    dh = rng.standard_normal((3, 4, 6))
    _, cache = rnn_forward(x, h0, Wx, Wh, b)
    assert_gradients(lambda: rnn_forward(x, h0, Wx, Wh, b)[0], (x, h0, Wx, Wh, b), rnn_backward(dh, cache), dh, TOL)


def test_rnn_forward_equals_repeated_steps():
    rng = np.random.default_rng(2)
    x, h0, Wx, Wh, b = _params(rng)
    h, _ = rnn_forward(x, h0, Wx, Wh, b)
    prev = h0
    for t in range(x.shape[1]):
        prev, _ = rnn_step_forward(x[:, t], prev, Wx, Wh, b)
        np.testing.assert_allclose(h[:, t], prev, rtol=1e-12)


def test_rnn_matches_torch_rnn_forward_and_gradients():
    rng = np.random.default_rng(3)
    x, h0, Wx, Wh, b = _params(rng, N=4, T=7, D=5, H=8)
    dh = rng.standard_normal((4, 7, 8))
    h, cache = rnn_forward(x, h0, Wx, Wh, b)
    dx, dh0, dWx, dWh, db = rnn_backward(dh, cache)

    ref = torch.nn.RNN(5, 8, nonlinearity="tanh", batch_first=True).double()
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.from_numpy(Wx.T))
        ref.weight_hh_l0.copy_(torch.from_numpy(Wh.T))
        ref.bias_ih_l0.copy_(torch.from_numpy(b))
        ref.bias_hh_l0.zero_()
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0[None], requires_grad=True)
    out, _ = ref(xt, h0t)
    out.backward(torch.from_numpy(dh))
    np.testing.assert_allclose(h, out.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dh0, h0t.grad[0].numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dWx, ref.weight_ih_l0.grad.numpy().T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dWh, ref.weight_hh_l0.grad.numpy().T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(db, ref.bias_ih_l0.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_word_embedding_gradient_accumulates_repeated_words():
    rng = np.random.default_rng(5)
    W = rng.standard_normal((5, 3))
    x = np.array([[0, 2, 2, 4], [4, 4, 1, 0]])
    out, cache = word_embedding_forward(x, W)
    np.testing.assert_array_equal(out, W[x])
    dout = rng.standard_normal((2, 4, 3))
    dW = word_embedding_backward(dout, cache)
    assert rel_error(dW, numeric_gradient(lambda: word_embedding_forward(x, W)[0], W, dout)) < TOL
    np.testing.assert_allclose(dW[3], 0.0)
