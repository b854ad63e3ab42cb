import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.layers.rnn_layers import (
    affine_backward,
    affine_forward,
    sigmoid,
    temporal_affine_backward,
    temporal_affine_forward,
    temporal_softmax_loss,
)
from tests.helpers import assert_gradients, numeric_gradient, rel_error

TOL = 1e-7


def test_sigmoid_is_stable_and_exact():
    x = np.array([-1000.0, -30.0, -1.0, 0.0, 2.5, 30.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out = sigmoid(x)
    # the tanh form is exact to float64 rounding in absolute terms (1 + tanh cancels for x << 0)
    np.testing.assert_allclose(out, torch.sigmoid(torch.from_numpy(x)).numpy(), rtol=1e-12, atol=1e-16)
    assert sigmoid(np.ones(3, dtype=np.float32)).dtype == np.float32


def test_affine_gradients():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((4, 5)), rng.standard_normal((5, 3)), rng.standard_normal(3)
    dout = rng.standard_normal((4, 3))
    _, cache = affine_forward(x, w, b)
    assert_gradients(lambda: affine_forward(x, w, b)[0], (x, w, b), affine_backward(dout, cache), dout, TOL)


def test_temporal_affine_gradients():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    dout = rng.standard_normal((2, 3, 5))
    out, cache = temporal_affine_forward(x, w, b)
    np.testing.assert_allclose(out, np.einsum("ntd,dm->ntm", x, w) + b)
    assert_gradients(lambda: temporal_affine_forward(x, w, b)[0], (x, w, b), temporal_affine_backward(dout, cache),
                     dout, TOL)


def test_temporal_softmax_loss_matches_torch_and_its_gradient():
    rng = np.random.default_rng(2)
    N, T, V = 3, 4, 6
    x = rng.standard_normal((N, T, V))
    y = rng.integers(0, V, size=(N, T))
    mask = rng.random((N, T)) > 0.3
    loss, dx = temporal_softmax_loss(x, y, mask)

    xt = torch.tensor(x, requires_grad=True)
    per_word = F.cross_entropy(xt.reshape(-1, V), torch.tensor(y).reshape(-1), reduction="none")
    expected = (per_word * torch.tensor(mask).reshape(-1)).sum() / N
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert rel_error(dx, numeric_gradient(lambda: temporal_softmax_loss(x, y, mask)[0], x, None)) < 1e-6


def test_temporal_softmax_loss_handles_huge_scores_in_float32():
    x = np.array([[[1e4, 0.0, -1e4]]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, dx = temporal_softmax_loss(x, np.array([[2]]), np.array([[True]]))
    assert np.isfinite(loss) and loss > 1e3
    assert dx.dtype == np.float32


@pytest.mark.parametrize("weighted", [False, True])
def test_label_smoothing_matches_torch_and_its_gradient(weighted):
    """Breaks caught: the smoothed targets' uniform part left out of the loss or its gradient, or
    spread over V - 1 words instead of torch's V."""
    import torch
    import torch.nn.functional as F

    from core.layers.rnn_layers import softmax_loss

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((6, 5)), rng.integers(0, 5, size=6)
    weights = rng.uniform(-1, 2, size=6) if weighted else None
    loss, dx = softmax_loss(x.copy(), y, norm=2.0, weights=weights, smoothing=0.2)
    xt = torch.tensor(x, requires_grad=True)
    per_row = F.cross_entropy(xt, torch.tensor(y), reduction="none", label_smoothing=0.2)
    expected = (per_row * torch.tensor(weights if weighted else np.ones(6))).sum() / 2.0
    expected.backward()
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    plain, _ = softmax_loss(x.copy(), y, norm=2.0, weights=weights)
    assert loss != plain


def test_a_smoothed_caption_loss_passes_the_gradient_check():
    from core.model.rnn_model import CaptioningRNN
    from tests.helpers import numeric_gradient, rel_error

    vocab = {w: i for i, w in enumerate(["<NULL>", "<START>", "<END>", "cat", "dog"])}
    model = CaptioningRNN(vocab, input_dim=4, wordvec_dim=3, hidden_dim=5, cell_type="lstm", dtype=np.float64,
                          seed=0)
    rng = np.random.default_rng(0)
    features = rng.standard_normal((2, 4))
    captions = np.array([[1, 3, 4, 2, 0], [1, 4, 2, 0, 0]])
    _, grads = model.loss(features, captions, smoothing=0.1)
    for name in ("W_vocab", "b_vocab", "Wx", "W_proj"):
        numeric = numeric_gradient(lambda: model.loss(features, captions, smoothing=0.1)[0], model.params[name],
                                   None)
        assert rel_error(grads[name], numeric) < 1e-7, name
