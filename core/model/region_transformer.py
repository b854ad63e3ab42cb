"""RegionTransformer: the transformer decoder (core/model/transformer.py) over image regions.

Shape letters: N batch, T caption length, R = g * g regions of a g x g grid, K boxes, D region
feature, E model width, V vocabulary.

Its memory is the regions (Regions, core/data/regions.py), each projected to E and given its place,
so that what a word attends to says where it is; the place is the kind of features' (its row's
`place`, core/data/feature_kinds.py), one class each here: a grid's cells ("cells") a learned 2-D
position embedding, row[r] + column[c] for the region in row r and column c; boxes ("geometry") a
projection of each box's geometry g, g W_geo (W_geo (5, E)). The mask of an image's own regions is
the key padding mask: its padded regions are never attended to.
With R memory tokens the cross-attention is real: every query and key projection trains, and
decoding projects the memory's keys and values once per caption (the key/value cache of the base
class).
"""
import math

import torch
import torch.nn as nn

from core.data.feature_kinds import GRID
from core.data.regions import GEOMETRY, as_regions
from core.model.region_decoder import CellSizes, GeometrySizes, region_kind
from core.model.registry import checkpoint_features
from core.model.transformer import CaptioningTransformer


class CellPlace(CellSizes):
    """The place of a grid's g x g cells: row[r] + column[c], row and column (g, E) on the model
    (row_embedding, column_embedding)."""

    def __init__(self, num_regions):
        super().__init__(num_regions)
        self.side = math.isqrt(num_regions)
        if self.side * self.side != num_regions:
            raise ValueError(f"num_regions must be a square grid's (49, 196), got {num_regions}")

    @staticmethod
    def count(config):
        return 2 * math.isqrt(config["num_regions"]) * config["wordvec_dim"]

    def build(self, model, E):
        model.row_embedding = nn.Parameter(torch.randn(self.side, E) * 0.02)  # (g, E)
        model.column_embedding = nn.Parameter(torch.randn(self.side, E) * 0.02)  # (g, E)

    def forward(self, model, regions):
        """Regions (N, R, D) -> the place of each region (R, E)."""
        if tuple(regions.features.shape[1:]) != (self.num_regions, model.input_dim):
            raise ValueError(f"region features of shape {tuple(regions.features.shape[1:])} per "
                             f"image do not fit this model's ({self.num_regions}, "
                             f"{model.input_dim}) (regions, dimensions)")
        return (model.row_embedding[:, None, :]
                + model.column_embedding[None, :, :]).reshape(self.num_regions, -1)


class GeometryPlace(GeometrySizes):
    """The place of boxes: a projection of each box's geometry, geometry_projection (5) -> (E)."""

    @staticmethod
    def count(config):
        return GEOMETRY * config["wordvec_dim"]

    @staticmethod
    def build(model, E):
        model.geometry_projection = nn.Linear(GEOMETRY, E, bias=False)  # (5) -> (E)

    @staticmethod
    def forward(model, regions):
        """Regions (N, K, D) with geometry (N, K, 5) -> the place of each box (N, K, E)."""
        if regions.geometry is None or tuple(regions.features.shape[2:]) != (model.input_dim,):
            raise ValueError(f"region features of shape {tuple(regions.features.shape[1:])} per "
                             f"image {'without' if regions.geometry is None else 'with'} geometry "
                             f"do not fit this model's (boxes, {model.input_dim}) with their "
                             "geometry")
        return model.geometry_projection(regions.geometry)


PLACES = {"cells": CellPlace, "geometry": GeometryPlace}


class RegionTransformer(CaptioningTransformer):
    """word_to_idx, input_dim D (a region's features), wordvec_dim E, ... as CaptioningTransformer;
    num_regions R: a grid's cells, a square number (7 x 7 = 49 for pool5; boxes: any number);
    features: the kind of region features it reads (core/data/feature_kinds.py)."""

    model_type = "region_transformer"
    one_memory_token = False  # R memory tokens: the cross-attention's q and k matter

    def __init__(self, word_to_idx, input_dim, wordvec_dim, num_regions=49, features=GRID,
                 **kwargs):
        self.features = region_kind(features).name
        self.place = PLACES[region_kind(features).place](num_regions)
        super().__init__(word_to_idx, input_dim, wordvec_dim, **kwargs)

    def _build(self, word_to_idx, input_dim, wordvec_dim, *args):
        super()._build(word_to_idx, input_dim, wordvec_dim, *args)
        self.place.build(self, wordvec_dim)

    def config(self):
        """Plain dict that rebuilds this model with `from_config` (weights not included)."""
        return dict(super().config(), model=self.model_type, features=self.features,
                    **self.place.sizes())

    @classmethod
    def from_config(cls, config, seed=None):
        """Build an untrained model from a `config()` dict."""
        word_to_idx = {w: i for i, w in enumerate(config["idx_to_word"]) if w is not None}
        keys = ("input_dim", "wordvec_dim", "num_heads", "num_layers", "max_length",
                "dim_feedforward", "dropout")
        features = checkpoint_features(config)
        sizes = PLACES[region_kind(features).place].config_sizes(config)
        return cls(word_to_idx, seed=seed, features=features, **sizes,
                   **{k: config[k] for k in keys})

    @staticmethod
    def count_parameters(config):
        """Number of trained weights of the model a `config()` dict describes, without building
        it."""
        E, L = config["wordvec_dim"], config["num_layers"]
        cross_query_key = L * 2 * (E * E + E)
        place = PLACES[region_kind(checkpoint_features(config)).place].count(config)
        return CaptioningTransformer.count_parameters(config) + cross_query_key + place

    def inputs(self, features):
        """Regions (or a grid's (N, R, D) array) of arrays or tensors -> Regions of tensors on the
        model's device: float32 features and geometry, a bool mask."""
        return as_regions(features).map(
            lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.device),
            lambda m: torch.as_tensor(m, dtype=torch.bool, device=self.device))

    def memory(self, features):
        """Regions (N, R, D) of tensors -> the projected regions with their place (N, R, E)."""
        return self.visual_projection(features.features) + self.place.forward(self, features)

    @staticmethod
    def memory_mask(features):
        """Regions -> (N, 1, 1, R) bool, False for an image's padded regions; None without a
        mask (all are attended to)."""
        return None if features.mask is None else features.mask[:, None, None, :]
