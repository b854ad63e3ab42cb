"""RegionTransformer: the transformer decoder (core/model/transformer.py) over image regions.

Shape letters: N batch, T caption length, R = g * g regions of a g x g grid, D region feature,
E model width, V vocabulary.

Its memory is the regions (N, R, D) (grid features, core/data/features.py), each projected to E and
given a learned 2-D position embedding, row[r] + column[c] for the region in row r and column c, so
that what a word attends to says where it is. With R memory tokens the cross-attention is real:
every query and key projection trains, and decoding projects the memory's keys and values once per
caption (the key/value cache of the base class).
"""
import math

import torch
import torch.nn as nn

from core.model.transformer import CaptioningTransformer


class RegionTransformer(CaptioningTransformer):
    """word_to_idx, input_dim D (a region's features), wordvec_dim E, ... as CaptioningTransformer;
    num_regions R: a square number (7 x 7 = 49 for pool5)."""

    model_type = "region_transformer"

    def __init__(self, word_to_idx, input_dim, wordvec_dim, num_regions=49, **kwargs):
        side = math.isqrt(num_regions)
        if side * side != num_regions:
            raise ValueError(f"num_regions must be a square grid's (49, 196), got {num_regions}")
        self.num_regions = num_regions
        super().__init__(word_to_idx, input_dim, wordvec_dim, **kwargs)

    def _build(self, word_to_idx, input_dim, wordvec_dim, *args):
        super()._build(word_to_idx, input_dim, wordvec_dim, *args)
        side = math.isqrt(self.num_regions)
        self.row_embedding = nn.Parameter(torch.randn(side, wordvec_dim) * 0.02)  # (g, E)
        self.column_embedding = nn.Parameter(torch.randn(side, wordvec_dim) * 0.02)  # (g, E)
        # R memory tokens: the cross-attention's q and k matter
        for layer in self.transformer.layers:
            layer.multihead_attn.query.requires_grad_(True)
            layer.multihead_attn.key.requires_grad_(True)

    def config(self):
        """Plain dict that rebuilds this model with `from_config` (weights not included)."""
        return dict(super().config(), model=self.model_type, features="grid",
                    num_regions=self.num_regions)

    @classmethod
    def from_config(cls, config, seed=None):
        """Build an untrained model from a `config()` dict."""
        word_to_idx = {w: i for i, w in enumerate(config["idx_to_word"]) if w is not None}
        keys = ("input_dim", "wordvec_dim", "num_heads", "num_layers", "max_length",
                "dim_feedforward", "dropout", "num_regions")
        return cls(word_to_idx, seed=seed, **{k: config[k] for k in keys})

    @staticmethod
    def count_parameters(config):
        """Number of trained weights of the model a `config()` dict describes, without building
        it."""
        E, L = config["wordvec_dim"], config["num_layers"]
        cross_query_key = L * 2 * (E * E + E)
        return CaptioningTransformer.count_parameters(config) + cross_query_key + 2 * math.isqrt(
            config["num_regions"]) * E

    def memory(self, features):
        """features (N, R, D) -> the projected regions with their place in the grid (N, R, E)."""
        if features.shape[1:] != (self.num_regions, self.input_dim):
            raise ValueError(f"region features of shape {tuple(features.shape[1:])} per image do "
                             f"not fit this model's ({self.num_regions}, {self.input_dim}) "
                             f"(regions, dimensions)")
        place = (self.row_embedding[:, None, :]
                 + self.column_embedding[None, :, :]).reshape(self.num_regions, -1)
        return self.visual_projection(features.float()) + place  # (N, R, E)
