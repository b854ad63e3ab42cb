"""RegionTransformer: the transformer decoder (core/model/transformer.py) over image regions.

Shape letters: N batch, T caption length, R = g * g regions of a g x g grid, K boxes, D region
feature, E model width, V vocabulary.

Its memory is the regions, each projected to E and given its place, so that what a word attends to
says where it is: grid regions (N, R, D) (core/data/features.py) a learned 2-D position embedding,
row[r] + column[c] for the region in row r and column c; object regions (N, K, D + 5)
(core/data/boxes.py: each box's feature, then its geometry g) a projection of the geometry,
g W_geo (W_geo (5, E)), and a key padding mask: an image's padded boxes are never attended to.
With R memory tokens the cross-attention is real: every query and key projection trains, and
decoding projects the memory's keys and values once per caption (the key/value cache of the base
class).
"""
import math

import torch
import torch.nn as nn

from core.data.boxes import GEOMETRY
from core.model.attention_lstm import check_region_kind
from core.model.transformer import CaptioningTransformer


class RegionTransformer(CaptioningTransformer):
    """word_to_idx, input_dim D (a region's features), wordvec_dim E, ... as CaptioningTransformer;
    num_regions R: a square number (7 x 7 = 49 for pool5; boxes: any number); features "grid" or
    "boxes"."""

    model_type = "region_transformer"

    def __init__(self, word_to_idx, input_dim, wordvec_dim, num_regions=49, features="grid",
                 **kwargs):
        self.features = check_region_kind(features)
        side = math.isqrt(num_regions)
        if features == "grid" and side * side != num_regions:
            raise ValueError(f"num_regions must be a square grid's (49, 196), got {num_regions}")
        self.num_regions = num_regions if features == "grid" else 0
        super().__init__(word_to_idx, input_dim, wordvec_dim, **kwargs)

    def _build(self, word_to_idx, input_dim, wordvec_dim, *args):
        super()._build(word_to_idx, input_dim, wordvec_dim, *args)
        if self.features == "boxes":
            self.geometry_projection = nn.Linear(GEOMETRY, wordvec_dim, bias=False)  # (5) -> (E)
        else:
            side = math.isqrt(self.num_regions)
            self.row_embedding = nn.Parameter(torch.randn(side, wordvec_dim) * 0.02)  # (g, E)
            self.column_embedding = nn.Parameter(torch.randn(side, wordvec_dim) * 0.02)  # (g, E)
        # R memory tokens: the cross-attention's q and k matter
        for layer in self.transformer.layers:
            layer.multihead_attn.query.requires_grad_(True)
            layer.multihead_attn.key.requires_grad_(True)

    def config(self):
        """Plain dict that rebuilds this model with `from_config` (weights not included)."""
        regions = {"num_regions": self.num_regions} if self.features == "grid" else {}
        return dict(super().config(), model=self.model_type, features=self.features, **regions)

    @classmethod
    def from_config(cls, config, seed=None):
        """Build an untrained model from a `config()` dict."""
        word_to_idx = {w: i for i, w in enumerate(config["idx_to_word"]) if w is not None}
        keys = ("input_dim", "wordvec_dim", "num_heads", "num_layers", "max_length",
                "dim_feedforward", "dropout")
        regions = ({"num_regions": config["num_regions"]}
                   if config.get("features", "grid") == "grid" else {})
        return cls(word_to_idx, seed=seed, features=config.get("features", "grid"), **regions,
                   **{k: config[k] for k in keys})

    @staticmethod
    def count_parameters(config):
        """Number of trained weights of the model a `config()` dict describes, without building
        it."""
        E, L = config["wordvec_dim"], config["num_layers"]
        cross_query_key = L * 2 * (E * E + E)
        place = (GEOMETRY * E if config.get("features", "grid") == "boxes"
                 else 2 * math.isqrt(config["num_regions"]) * E)
        return CaptioningTransformer.count_parameters(config) + cross_query_key + place

    def memory(self, features):
        """features (N, R, D) grid regions or (N, K, D + 5) boxes -> the projected regions with
        their place (N, R, E) (zero rows for padded boxes, which memory_mask hides)."""
        if self.features == "boxes":
            if features.ndim != 3 or features.shape[2] != self.input_dim + GEOMETRY:
                raise ValueError(f"box features of shape {tuple(features.shape[1:])} per image do "
                                 f"not fit this model's (boxes, {self.input_dim} + {GEOMETRY}) "
                                 "(features, then geometry)")
            features = features.float()
            return (self.visual_projection(features[..., :self.input_dim])
                    + self.geometry_projection(features[..., self.input_dim:]))  # (N, K, E)
        if features.shape[1:] != (self.num_regions, self.input_dim):
            raise ValueError(f"region features of shape {tuple(features.shape[1:])} per image do "
                             f"not fit this model's ({self.num_regions}, {self.input_dim}) "
                             f"(regions, dimensions)")
        place = (self.row_embedding[:, None, :]
                 + self.column_embedding[None, :, :]).reshape(self.num_regions, -1)
        return self.visual_projection(features.float()) + place  # (N, R, E)

    def memory_mask(self, features):
        """boxes (N, K, D + 5) -> (N, 1, 1, K) bool, False for an image's padded boxes (a zero
        area); None for grid regions (all are attended to)."""
        if self.features != "boxes":
            return None
        return (features[..., -1] > 0)[:, None, None, :]
