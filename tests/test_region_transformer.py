import numpy as np
import pytest
import torch

from core.model.checkpoint import load_checkpoint, save_checkpoint
from core.model.region_transformer import RegionTransformer
from tests.test_attention_lstm import VOCAB, _ordering_task


def _model(seed=0, **kw):
    sizes = dict(input_dim=4, wordvec_dim=16, num_regions=4, num_heads=2, num_layers=1, dim_feedforward=32,
                 dropout=0.0, max_length=10)
    return RegionTransformer(VOCAB, seed=seed, **dict(sizes, **kw))


def _four(features):
    """The ordering task's two regions as a 2 x 2 grid: the two objects in the top row, empty bottom row."""
    return np.concatenate([features, np.zeros_like(features)], axis=1)


def test_every_weight_trains_and_is_counted():
    """Break caught: the cross-attention's query and key left frozen (they matter with R memory tokens)."""
    model = _model()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n, _ in model.named_parameters()} == trained
    assert RegionTransformer.count_parameters(model.config()) == sum(p.numel() for p in model.parameters())
    loss = model.loss(torch.randn(3, 4, 4), torch.tensor([[1, 4, 5, 2]] * 3))
    loss.backward()
    for name in ("transformer.layers.0.multihead_attn.query.weight", "row_embedding", "column_embedding"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name


def test_it_reads_the_regions_in_turn_where_the_mean_region_cannot():
    """Break caught: the position embedding left out of the memory (the regions' content alone cannot
    say which colour is on the left), or the memory averaged into one token."""
    rng = np.random.default_rng(4)
    features, captions = _ordering_task(rng, 96)
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(_four(features)), torch.from_numpy(captions)
    for _ in range(150):
        optimizer.zero_grad()
        model.loss(x, y).backward()
        optimizer.step()
    test_features, test_captions = _ordering_task(np.random.default_rng(5), 48)
    predicted = model.sample(_four(test_features), max_length=3)
    assert (predicted == test_captions[:, 1:]).all(axis=1).mean() == 1.0


def test_its_own_sizes_are_saved_and_other_regions_refused(tmp_path):
    """(tests/test_registry.py round-trips every decoder; these are the region transformer's own sizes.)"""
    model = _model(seed=3)
    save_checkpoint(model, tmp_path / "r.pt")
    _, config = load_checkpoint(tmp_path / "r.pt")
    assert config["model"] == "region_transformer" and config["num_regions"] == 4 and config["features"] == "grid"
    with pytest.raises(ValueError, match=r"region features of shape \(9, 4\) per image do not fit"):
        model.sample(np.zeros((2, 9, 4), dtype=np.float32), max_length=5)
    with pytest.raises(ValueError, match="num_regions must be a square"):
        _model(num_regions=6)
