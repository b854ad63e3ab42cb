"""What every decoder of the registry must do, whatever its backend or features: tests that
enumerate core.model.registry.MODEL_TYPES, so a new row is tested here without a line added."""
import json

import numpy as np
import pytest
import torch

from core.model.checkpoint import load_checkpoint, save_checkpoint
from core.model.registry import BACKENDS, MODEL_TYPES, integer_sizes, tiny_sizes
from tests.helpers import DECODER_IDS, DECODERS, tiny_data, tiny_model, weights

WORDS = ["<NULL>", "<START>", "<END>", "<UNK>", "red", "green", "cat", "dog", "sits"]


def _data(kind, rng):
    """Tiny data of a kind of features: 3 images (4 regions or boxes when it has regions)."""
    return dict(tiny_data(kind, rng, words=len(WORDS)), idx_to_word=WORDS)


@pytest.mark.parametrize("name,kind", DECODERS, ids=DECODER_IDS)
def test_every_decoder_keeps_float32(name, kind):
    """Break caught: a silent float64 temporary in a hot path (a gradient or weight upcast)."""
    rng = np.random.default_rng(0)
    data = _data(kind, rng)
    model = tiny_model(name, data)
    features, captions = data["train_features"], data["train_captions"]
    if MODEL_TYPES[name].uses_torch:
        loss = model.loss(model.inputs(features), torch.from_numpy(captions).long())
        loss.backward()
        assert loss.dtype == torch.float32
        assert {p.grad.dtype for p in model.parameters() if p.grad is not None} == {torch.float32}
    else:
        _, grads = model.loss(features.astype(np.float16), captions)  # region files are float16
        assert {g.dtype for g in grads.values()} == {np.dtype(np.float32)}
    assert {v.dtype for v in weights(model).values()} == {np.dtype(np.float32)}


@pytest.mark.parametrize("name,kind", DECODERS, ids=DECODER_IDS)
def test_every_decoder_round_trips_its_checkpoint_without_pickle(name, kind, tmp_path):
    """Breaks caught: a weight or size not saved, a config that does not rebuild the same model (its
    kind of features included), a file that needs pickle to load."""
    rng = np.random.default_rng(1)
    data = _data(kind, rng)
    model = tiny_model(name, data, seed=3)
    path = tmp_path / f"m{BACKENDS[MODEL_TYPES[name].backend].suffix}"
    save_checkpoint(model, path, extra={"note": "x"})
    if MODEL_TYPES[name].uses_torch:
        blob = torch.load(path, weights_only=True)  # refuses anything but tensors and plain values
        config = blob["config"]
    else:
        with np.load(path, allow_pickle=False) as f:
            config = json.loads(str(f["config"]))
            assert set(f.files) == set(model.state_arrays()) | {"config"}
    loaded, loaded_config = load_checkpoint(path)
    assert loaded_config == config and config["model"] == name and config["extra"] == {"note": "x"}
    assert config.get("features", "fc7") == kind
    assert {k: config[k] for k in tiny_sizes() if k in config} == {k: tiny_sizes()[k] for k in
                                                                 MODEL_TYPES[name].size_flags}
    assert set(integer_sizes()) >= {k for k, v in config.items() if isinstance(v, int) and k != "dtype"}
    before, after = weights(model), weights(loaded)
    assert set(before) == set(after)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    np.testing.assert_array_equal(loaded.sample(data["train_features"], max_length=6),
                                  model.sample(data["train_features"], max_length=6))


@pytest.mark.parametrize("name,kind", DECODERS, ids=DECODER_IDS)
def test_every_decoder_meets_the_step_protocol_with_a_named_state(name, kind):
    """core/model/decoding.py's Decoder (AttendingDecoder over regions), a NamedTuple state that
    select_state keeps, and the attention read by name. Breaks caught: a positional tuple state, a
    select_state that drops or reorders the shared fields, a region decoder without attention."""
    from core.data.feature_kinds import FEATURE_KINDS
    from core.model.decoding import AttendingDecoder, Decoder

    rng = np.random.default_rng(0)
    data = _data(kind, rng)
    model = tiny_model(name, data)
    assert isinstance(model, Decoder)
    attends = FEATURE_KINDS[kind].regions
    assert isinstance(model, AttendingDecoder) or not attends
    with model.decoding():
        state = model.init_state(data["train_features"])
        assert hasattr(state, "_fields") and hasattr(state, "_replace")  # a NamedTuple
        _, state = model.step(np.full(3, model.start_idx), state)
        picked = model.select_state(state, np.array([2, 0, 0, 1]))
        assert type(picked) is type(state) and picked._fields == state._fields
        logprobs, _ = model.step(np.array([4, 5, 5, 6]), picked)
        alone, _ = model.step(np.array([4]), model.select_state(state, np.array([2])))
    np.testing.assert_allclose(logprobs[0], alone[0], rtol=1e-5, atol=1e-6)
    if attends:
        alpha = model.attention(picked)
        assert alpha.shape == (4, data["train_features"].shape[1])
        np.testing.assert_allclose(alpha.sum(axis=1), 1, rtol=1e-5)
