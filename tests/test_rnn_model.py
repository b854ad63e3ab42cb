import numpy as np
import pytest

from core.model.checkpoint import load_checkpoint, save_checkpoint
from core.model.rnn_model import CaptioningRNN
from tests.helpers import numeric_gradient, rel_error

VOCAB = {w: i for i, w in enumerate(["<NULL>", "<START>", "<END>", "<UNK>", "cat", "dog", "sits", "runs"])}


def _captions(rng, N, T):
    caps = rng.integers(4, len(VOCAB), size=(N, T))
    caps[:, 0] = VOCAB["<START>"]
    caps[0, -2], caps[0, -1] = VOCAB["<END>"], VOCAB["<NULL>"]
    return caps


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
def test_loss_gradients(cell_type):
    rng = np.random.default_rng(0)
    model = CaptioningRNN(VOCAB, input_dim=6, wordvec_dim=5, hidden_dim=4, cell_type=cell_type,
                          dtype=np.float64, seed=0)
    features = rng.standard_normal((3, 6))
    captions = _captions(rng, 3, 6)
    loss, grads = model.loss(features, captions)
    names = {"W_embed", "W_proj", "b_proj", "Wx", "Wh", "b", "W_vocab", "b_vocab"} | ({"bh"} if cell_type == "gru" else set())
    assert set(grads) == set(model.params) == names
    for name in ("b", "b_proj", "b_vocab", "bh"):  # zero at initialisation: make their gradients count
        if name in model.params:
            model.params[name] += rng.standard_normal(model.params[name].shape)
    loss, grads = model.loss(features, captions)
    for name, param in model.params.items():
        num = numeric_gradient(lambda: model.loss(features, captions)[0], param, None)
        assert grads[name].shape == param.shape
        assert rel_error(grads[name], num) < 1e-7, name


def test_loss_ignores_null_targets():
    rng = np.random.default_rng(1)
    model = CaptioningRNN(VOCAB, input_dim=6, wordvec_dim=5, hidden_dim=4, seed=0)
    features = rng.standard_normal((2, 6)).astype(np.float32)
    short = np.array([[1, 4, 2, 0, 0], [1, 5, 6, 2, 0]])
    loss_short, _ = model.loss(features, short)
    padded = np.concatenate([short, np.zeros((2, 3), dtype=short.dtype)], axis=1)
    loss_padded, _ = model.loss(features, padded)
    assert loss_short == pytest.approx(loss_padded, rel=1e-6)


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
def test_overfits_tiny_data_and_samples_it_back(cell_type):
    from core.training.optim import adam

    rng = np.random.default_rng(2)
    model = CaptioningRNN(VOCAB, input_dim=8, wordvec_dim=16, hidden_dim=32, cell_type=cell_type, seed=0)
    features = rng.standard_normal((4, 8)).astype(np.float32)
    captions = np.array([[1, 4, 6, 2, 0], [1, 5, 7, 2, 0], [1, 4, 7, 6, 2], [1, 5, 6, 2, 0]])
    configs = {k: {"learning_rate": 2e-2} for k in model.params}
    first = None
    for _ in range(300):
        loss, grads = model.loss(features, captions)
        first = loss if first is None else first
        for k in model.params:
            model.params[k], configs[k] = adam(model.params[k], grads[k], configs[k])
    assert loss < 0.02 * first
    sampled = model.sample(features, max_length=6)
    assert sampled.shape == (4, 6) and sampled.dtype == np.int64
    expected = np.zeros((4, 6), dtype=np.int64)
    expected[:, :4] = captions[:, 1:]
    np.testing.assert_array_equal(sampled, expected)


def test_rejects_bad_configuration():
    with pytest.raises(ValueError, match="cell_type"):
        CaptioningRNN(VOCAB, cell_type="mgu")
    with pytest.raises(ValueError, match="<NULL>"):
        CaptioningRNN({"<START>": 0, "<END>": 1})


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
def test_fast_loss_equals_the_cs231n_reference_layers(cell_type):
    """CaptioningRNN.loss (vocabulary scores only where a target exists) against the CS231n way:
    step functions one time step at a time, temporal affine over all steps, masked temporal softmax."""
    from core.layers.rnn_layers import temporal_affine_backward, temporal_affine_forward, temporal_softmax_loss
    from gru_utils import gru_step_forward
    from lstm_utils import lstm_step_forward
    from rnn_utils import rnn_step_forward, word_embedding_forward

    rng = np.random.default_rng(7)
    model = CaptioningRNN(VOCAB, input_dim=6, wordvec_dim=5, hidden_dim=4, cell_type=cell_type, dtype=np.float64,
                          seed=1)
    p = model.params
    for k in ("b", "b_proj", "b_vocab", "bh"):
        if k in p:
            p[k] += rng.standard_normal(p[k].shape)
    features, captions = rng.standard_normal((3, 6)), _captions(rng, 3, 6)
    loss, grads = model.loss(features, captions)

    x, _ = word_embedding_forward(captions[:, :-1], p["W_embed"])
    h = features @ p["W_proj"] + p["b_proj"]
    c = np.zeros_like(h)
    hs = []
    for t in range(x.shape[1]):
        if cell_type == "rnn":
            h, _ = rnn_step_forward(x[:, t], h, p["Wx"], p["Wh"], p["b"])
        elif cell_type == "lstm":
            h, c, _ = lstm_step_forward(x[:, t], h, c, p["Wx"], p["Wh"], p["b"])
        else:
            h, _ = gru_step_forward(x[:, t], h, p["Wx"], p["Wh"], p["b"], p["bh"])
        hs.append(h)
    scores, cache = temporal_affine_forward(np.stack(hs, axis=1), p["W_vocab"], p["b_vocab"])
    ref_loss, dscores = temporal_softmax_loss(scores, captions[:, 1:], captions[:, 1:] != VOCAB["<NULL>"])
    _, dW_vocab, db_vocab = temporal_affine_backward(dscores, cache)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(grads["W_vocab"], dW_vocab, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["b_vocab"], db_vocab, rtol=1e-10, atol=1e-12)
