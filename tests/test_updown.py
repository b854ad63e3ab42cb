"""The Up-Down decoder (core/model/updown.py): the loss's gradients by centered differences (the
place embedding and word embedding included), and a task only attention can solve, which it
learns and which fails when attention is replaced by the mean region."""
import numpy as np
import pytest

import updown_utils
from core.model.updown import UpDown
from tests.helpers import numeric_gradient, rel_error
from tests.test_attention_lstm import VOCAB, _captions, _ordering_task, _train


def _model(dtype=np.float64, seed=0, **sizes):
    sizes = dict(dict(input_dim=4, num_regions=3, wordvec_dim=5, hidden_dim=6, attention_dim=4), **sizes)
    return UpDown(VOCAB, dtype=dtype, seed=seed, **sizes)


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_gradients(weighted):
    rng = np.random.default_rng(0)
    model = _model()
    for k in ("b1", "b2", "b_vocab"):  # zero at init: give them values that matter
        model.params[k] += rng.standard_normal(model.params[k].shape)
    model.params["W_embed"] *= 100  # word vectors of size 1, so that W1x's gradient is not tiny
    features, captions = rng.standard_normal((2, 3, 4)), _captions(rng, 2, 5)
    weights = rng.uniform(-1, 2, size=2) if weighted else None
    _, grads = model.loss(features, captions, weights)
    for name, param in model.params.items():
        numeric = numeric_gradient(lambda: model.loss(features, captions, weights)[0], param, None)
        assert rel_error(grads[name], numeric) < 1e-7, name


def _ordering_accuracy(seed=4):
    features, captions = _ordering_task(np.random.default_rng(seed), 96)
    model = _model(dtype=np.float32, input_dim=4, num_regions=2, wordvec_dim=8, hidden_dim=16, attention_dim=8)
    _train(model, features, captions)
    test_features, test_captions = _ordering_task(np.random.default_rng(5), 48)
    predicted = model.sample(test_features, max_length=3)
    return model, test_features, test_captions, (predicted == test_captions[:, 1:]).all(axis=1).mean()


def test_it_reads_the_regions_in_turn_where_the_mean_region_cannot(monkeypatch):
    """Breaks caught: attention replaced by the mean region (alpha uniform): (red, blue) and
    (blue, red) then look alike and half the orders are wrong."""
    model, features, captions, exact = _ordering_accuracy()
    assert exact == 1.0
    state = model.init_state(features)
    _, state = model.step(captions[:, 0], state)
    first = model.attention(state)
    _, state = model.step(captions[:, 1], state)
    second = model.attention(state)
    # the first colour read from the left region; for the second the attention moves right (the
    # language LSTM knows the first colour, so a mixture of both regions already tells the second)
    assert (first[:, 0] > 0.5).all() and second[:, 1].mean() > first[:, 1].mean() + 0.2
    attend = updown_utils.attention_forward

    def mean_region(a, a_proj, h_proj, w_att, mask=None):
        context, alpha, cache = attend(a, a_proj, h_proj, w_att, mask)
        alpha = np.full_like(alpha, 1 / alpha.shape[1])
        return np.einsum("nr,nrd->nd", alpha, a), alpha, (cache[0], cache[1], alpha, cache[3])

    monkeypatch.setattr(updown_utils, "attention_forward", mean_region)
    assert _ordering_accuracy()[3] < 0.75
