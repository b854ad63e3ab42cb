import numpy as np
import pytest

from core.model.checkpoint import load_checkpoint, save_checkpoint
from core.model.attention_lstm import AttentionLSTM
from core.training.optim import adam
from tests.helpers import numeric_gradient, rel_error

WORDS = ["<NULL>", "<START>", "<END>", "<UNK>", "red", "green", "blue", "yellow", "cat", "dog"]
VOCAB = {w: i for i, w in enumerate(WORDS)}


def _model(dtype=np.float64, alpha_c=0.7, seed=0, **sizes):
    sizes = dict(dict(input_dim=4, num_regions=3, wordvec_dim=5, hidden_dim=6, attention_dim=4), **sizes)
    return AttentionLSTM(VOCAB, alpha_c=alpha_c, dtype=dtype, seed=seed, **sizes)


def _captions(rng, N, T):
    caps = rng.integers(4, len(VOCAB), size=(N, T))
    caps[:, 0] = VOCAB["<START>"]
    caps[0, -2], caps[0, -1] = VOCAB["<END>"], VOCAB["<NULL>"]
    return caps


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_gradients(weighted):
    """Every weight, the position embedding P and the penalty included (breaks caught: P's share
    through the mean region or the attention dropped, the penalty's gradient left out)."""
    rng = np.random.default_rng(0)
    model = _model(alpha_c=3.0)
    for name in ("W_att_h", "w_att"):  # attention that depends on h clearly enough to be checked
        model.params[name] *= 3
    for name in ("b", "b_att", "b_init_h", "b_init_c", "b_vocab", "w_beta", "b_beta"):  # zero at initialisation
        model.params[name] += rng.standard_normal(model.params[name].shape)
    features, captions = rng.standard_normal((3, 3, 4)), _captions(rng, 3, 6)
    weights = rng.standard_normal(3) if weighted else None
    loss, grads = model.loss(features, captions, weights)
    assert set(grads) == set(model.params)
    for name, param in model.params.items():
        num = numeric_gradient(lambda: model.loss(features, captions, weights)[0], param, None)
        assert rel_error(grads[name], num) < 1e-7, name


def test_the_penalty_is_the_doubly_stochastic_term_over_a_captions_words():
    rng = np.random.default_rng(1)
    model = _model(alpha_c=0.0)
    features, captions = rng.standard_normal((3, 3, 4)), _captions(rng, 3, 6)
    plain, _ = model.loss(features, captions)
    model.alpha_c = 0.7
    with_penalty, _ = model.loss(features, captions)
    # the attention maps of the words that have a target, from the decoding steps
    state = model.init_state(features)
    alphas = []
    for t in range(captions.shape[1] - 1):
        _, state = model.step(captions[:, t], state)
        alphas.append(state[4])
    mask = (captions[:, 1:] != VOCAB["<NULL>"]).T[:, :, None]  # (T, N, 1)
    expected = 0.7 * ((1 - (np.array(alphas) * mask).sum(axis=0)) ** 2).mean()  # over images and regions
    assert with_penalty - plain == pytest.approx(expected, rel=1e-10)
    assert model.loss(features, captions, np.ones(3))[0] == pytest.approx(plain, rel=1e-12)  # self-critical: off


def test_its_own_sizes_are_saved_and_other_regions_refused(tmp_path):
    """(tests/test_registry.py round-trips every decoder; these are the attention LSTM's own sizes.)"""
    model = _model(dtype=np.float32, seed=3)
    save_checkpoint(model, tmp_path / "a.npz")
    loaded, config = load_checkpoint(tmp_path / "a.npz")
    assert config["model"] == "attention_lstm" and config["num_regions"] == 3 and config["features"] == "grid"
    assert loaded.alpha_c == pytest.approx(0.7) and loaded.attention_dim == 4
    with pytest.raises(ValueError, match=r"region features of shape \(5, 4\) per image do not fit .*\(3, 4\)"):
        model.sample(np.zeros((2, 5, 4), dtype=np.float32))


def _ordering_task(rng, n):
    """Two regions, each holding one of 4 colours (a one-hot vector plus noise); the caption names the
    left region's colour, then the right one's. The mean of the regions is the same for (a, b) and
    (b, a): only a decoder that looks at each region in turn can get the order right."""
    colours = rng.integers(0, 4, size=(n, 2))
    colours[:, 1] = (colours[:, 0] + rng.integers(1, 4, size=n)) % 4  # two different colours
    features = 0.05 * rng.standard_normal((n, 2, 4))
    features[np.arange(n)[:, None], np.arange(2)[None, :], colours] += 1.0
    captions = np.stack([np.full(n, VOCAB["<START>"]), colours[:, 0] + 4, colours[:, 1] + 4,
                         np.full(n, VOCAB["<END>"])], axis=1)
    return features.astype(np.float32), captions


def _train(model, features, captions, steps=250):
    configs = {k: {"learning_rate": 2e-2} for k in model.params}
    for _ in range(steps):
        _, grads = model.loss(features, captions)
        for k in model.params:
            model.params[k], configs[k] = adam(model.params[k], grads[k], configs[k])


def test_it_reads_the_regions_in_turn_where_the_mean_region_cannot():
    """Break caught: attention replaced by the mean region (alpha uniform), or the position embedding
    left out: either way (red, blue) and (blue, red) look alike and half the orders are wrong."""
    rng = np.random.default_rng(4)
    features, captions = _ordering_task(rng, 96)
    model = _model(dtype=np.float32, alpha_c=0.0, input_dim=4, num_regions=2, wordvec_dim=8, hidden_dim=16,
                   attention_dim=8)
    _train(model, features, captions)
    test_features, test_captions = _ordering_task(np.random.default_rng(5), 48)
    predicted = model.sample(test_features, max_length=3)
    exact = (predicted == test_captions[:, 1:]).all(axis=1).mean()
    assert exact == 1.0
    state = model.init_state(test_features)
    _, state = model.step(test_captions[:, 0], state)
    first = state[4]
    _, state = model.step(test_captions[:, 1], state)
    second = state[4]
    assert (first[:, 0] > 0.5).mean() == 1.0 and (second[:, 1] > 0.5).mean() == 1.0  # left, then right
