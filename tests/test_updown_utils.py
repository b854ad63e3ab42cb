"""The Up-Down cell (updown_utils.py): centered-difference gradient checks in float64 and the same
equations in torch autograd (benchmarks/bench_decoders.py's torch_updown, also the speed
reference) as the oracle of its values and every gradient."""
import numpy as np
import torch

from benchmarks.bench_decoders import torch_updown
from tests.helpers import assert_gradients
from updown_utils import WEIGHTS, updown_backward, updown_forward

N, T, R, D, W, H, A = 2, 3, 4, 5, 3, 4, 3


def _inputs(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    shapes = {"W1x": (W, 4 * H), "W1v": (D, 4 * H), "W1h2": (H, 4 * H), "W1h": (H, 4 * H), "b1": (4 * H,),
              "W_va": (D, A), "W_ha": (H, A), "w_a": (A,), "W2v": (D, 4 * H), "W2h1": (H, 4 * H),
              "W2h": (H, 4 * H), "b2": (4 * H,)}
    weights = {k: (rng.standard_normal(s) * 0.5).astype(dtype) for k, s in shapes.items()}
    return (rng.standard_normal((N, T, W)).astype(dtype), rng.standard_normal((N, R, D)).astype(dtype),
            weights)


def test_every_gradient_matches_centered_differences():
    """Breaks caught: any term of the backward pass left out (h2_{t-1} feeds both LSTMs; h1_t the
    attention, LSTM2 and the next step; the mean region every step of LSTM1)."""
    x, v, weights = _inputs()
    args = [x, v, *(weights[k] for k in WEIGHTS)]
    dout = np.random.default_rng(1).standard_normal((N, T, H))
    _, _, cache = updown_forward(*args)
    grads = updown_backward(dout, cache)
    assert_gradients(lambda: updown_forward(*args)[0], args, grads, dout, tol=1e-7)


def test_values_and_gradients_equal_torch_autograd():
    x, v, weights = _inputs(seed=2)
    h2, alpha, cache = updown_forward(x, v, *(weights[k] for k in WEIGHTS))
    dout = np.random.default_rng(3).standard_normal(h2.shape)
    grads = updown_backward(dout, cache)
    tx, tv = torch.tensor(x, requires_grad=True), torch.tensor(v, requires_grad=True)
    tp = {k: torch.tensor(w, requires_grad=True) for k, w in weights.items()}
    th2, talpha = torch_updown(tx, tv, tp)
    np.testing.assert_allclose(h2, th2.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(alpha, talpha.detach().numpy(), rtol=1e-10, atol=1e-12)
    (th2 * torch.tensor(dout)).sum().backward()
    expected = [tx.grad, tv.grad, *(tp[k].grad for k in WEIGHTS)]
    for name, ours, theirs in zip(("x", "v", *WEIGHTS), grads, expected):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-9, atol=1e-11, err_msg=name)


def test_float32_stays_float32():
    x, v, weights = _inputs(dtype=np.float32)
    h2, alpha, cache = updown_forward(x, v, *(weights[k] for k in WEIGHTS))
    assert h2.dtype == alpha.dtype == np.float32
    assert {g.dtype for g in updown_backward(np.ones_like(h2), cache)} == {np.dtype(np.float32)}


def _padded(v, count, rng):
    """The regions v (N, R, D) with image 1 keeping only its first `count` (the rest, padding, set
    to large noise) -> padded regions, mask (N, R)."""
    mask = np.ones(v.shape[:2], dtype=bool)
    mask[1, count:] = False
    padded = v.copy()
    padded[~mask] = 50 * rng.standard_normal((int((~mask).sum()), v.shape[2]))
    return padded, mask


def test_gradients_with_padded_regions_match_centered_differences():
    """Break caught: a padded region still weighted by the attention or the mean region, so that its
    values (and their gradient) leak into the image's outputs."""
    x, v, weights = _inputs(seed=4)
    v, mask = _padded(v, 2, np.random.default_rng(5))
    args = [x, v, *(weights[k] for k in WEIGHTS)]
    dout = np.random.default_rng(6).standard_normal((N, T, H))
    _, alpha, cache = updown_forward(*args, mask=mask)
    grads = updown_backward(dout, cache)
    assert (alpha[1, :, 2:] == 0).all()
    assert_gradients(lambda: updown_forward(*args, mask=mask)[0], args, grads, dout, tol=1e-7)
    assert (grads[1][1, 2:] == 0).all()  # nothing reaches a padded region


def test_padding_an_images_regions_changes_none_of_its_outputs_or_gradients():
    x, v, weights = _inputs(seed=7)
    w = [weights[k] for k in WEIGHTS]
    dout = np.random.default_rng(8).standard_normal((1, T, H))
    alone_h, alone_alpha, cache = updown_forward(x[1:], v[1:, :2], *w)  # image 1 with its 2 regions
    alone = updown_backward(dout, cache)
    padded, mask = _padded(v, 2, np.random.default_rng(9))
    h, alpha, cache = updown_forward(x, padded, *w, mask=mask)
    grads = updown_backward(np.concatenate([np.zeros((1, T, H)), dout]), cache)
    np.testing.assert_allclose(h[1:], alone_h, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(alpha[1:, :, :2], alone_alpha, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads[1][1:, :2], alone[1], rtol=1e-10, atol=1e-13)  # the regions'
    for k, name in enumerate(WEIGHTS):  # image 0's upstream gradient is zero: the weights' are image 1's
        np.testing.assert_allclose(grads[2 + k], alone[2 + k], rtol=1e-9, atol=1e-12, err_msg=name)
