"""What the numpy decoders over image regions share (the attention LSTM and Up-Down are siblings
built on it): the place a region's feature gets, the mask of an image's own regions, the mean
region, sizes and config, and the named decoding state.

Shape letters: N batch, R regions, D region feature, V vocabulary.

A decoder reads Regions (core/data/regions.py): features (N, R, D), geometry (N, R, 5) or None,
mask (N, R) or None. Each region gets its place added, so that what the decoder reads from a region
says where it is ("to the left of" needs that; a convolutional feature alone hardly does). How is
the kind of features' business (core/data/feature_kinds.py: its row's `place`), and each place is
one class here:

    cells     a grid's R cells, a learned embedding of each: a = features + P (P (R, D))
    geometry  boxes, a projection of each box's geometry: a = features + g W_geo (W_geo (5, D))

A decoder never asks which kind of features it reads; padded regions are the mask's (no attention,
no gradient, no part in the mean), whatever their values.
"""
import numpy as np

from core.data.feature_kinds import REGION_KINDS, feature_kind
from core.data.regions import GEOMETRY, as_regions
from core.model.registry import checkpoint_features
from core.model.rnn_model import NumpyDecoder


class CellSizes:
    """What a grid's cells add to a model's sizes, whatever its backend: num_regions R."""

    def __init__(self, num_regions):
        self.num_regions = int(num_regions)

    def sizes(self):
        """The model sizes this place adds to a config."""
        return {"num_regions": self.num_regions}

    @staticmethod
    def config_sizes(config):
        """The sizes of a config that build this place."""
        return {"num_regions": config["num_regions"]}


class GeometrySizes:
    """What boxes add to a model's sizes, whatever its backend: nothing (any number of boxes)."""

    def __init__(self, num_regions=None):
        del num_regions

    @staticmethod
    def sizes():
        return {}

    @staticmethod
    def config_sizes(config):
        return {}


class CellPlace(CellSizes):
    """The place of a grid's cells: a learned embedding P (R, D) of each of its R cells."""

    @staticmethod
    def count(config):
        """The number of its weights in the model a config describes."""
        return config["num_regions"] * config["input_dim"]

    def weights(self, D, rng):
        """Its initial weights: {"P": (R, D)}."""
        return {"P": rng.standard_normal((self.num_regions, D)) / 10}

    @staticmethod
    def forward(regions, params, dtype):
        """Regions (N, R, D) -> a (N, R, D) = features + P in dtype; ValueError when the regions do
        not fit P."""
        if regions.features.shape[1:] != params["P"].shape:
            raise ValueError(f"region features of shape {regions.features.shape[1:]} per image do "
                             f"not fit this model's {params['P'].shape} (regions, dimensions)")
        return regions.features.astype(dtype, copy=False) + params["P"]

    @staticmethod
    def backward(regions, da):
        """da (N, R, D), the gradient of forward's a -> {"P": dP}."""
        return {"P": da.sum(axis=0)}


class GeometryPlace(GeometrySizes):
    """The place of boxes: a projection W_geo (5, D) of each box's geometry."""

    @staticmethod
    def count(config):
        return GEOMETRY * config["input_dim"]

    @staticmethod
    def weights(D, rng):
        """Its initial weights: {"W_geo": (5, D)}."""
        return {"W_geo": rng.standard_normal((GEOMETRY, D)) / np.sqrt(GEOMETRY)}

    @staticmethod
    def forward(regions, params, dtype):
        """Regions (N, K, D) with geometry (N, K, 5) -> a (N, K, D) = features + g W_geo in dtype;
        ValueError when the regions have no geometry or another D."""
        D = params["W_geo"].shape[1]
        if regions.geometry is None or regions.features.shape[2:] != (D,):
            raise ValueError(f"region features of shape {regions.features.shape[1:]} per image "
                             f"{'without' if regions.geometry is None else 'with'} geometry do "
                             f"not fit this model's (boxes, {D}) with their geometry")
        return (regions.features.astype(dtype, copy=False)
                + regions.geometry.astype(dtype, copy=False) @ params["W_geo"])

    @staticmethod
    def backward(regions, da):
        """da (N, K, D), the gradient of forward's a -> {"W_geo": dW_geo}."""
        geometry = regions.geometry.astype(da.dtype, copy=False)  # (N, K, 5)
        return {"W_geo": np.einsum("nkg,nkd->gd", geometry, da)}


PLACES = {"cells": CellPlace, "geometry": GeometryPlace}


def region_kind(features):
    """The name of a kind of region features -> its row; ValueError for another kind."""
    if features not in REGION_KINDS:
        raise ValueError(f'a region decoder reads {" or ".join(REGION_KINDS)} features, not '
                         f'"{features}"')
    return feature_kind(features)


def place_of(features, num_regions=None):
    """The place (CellPlace or GeometryPlace) of a kind of region features."""
    return PLACES[region_kind(features).place](num_regions)


class RegionDecoder(NumpyDecoder):
    """The common part of the numpy region decoders. A subclass sets model_type, `sizes` (its
    config's sizes after input_dim, in order; `size_defaults` for those older checkpoints lack),
    `State` (a NamedTuple with an `alpha` field, the attention (N, R) of the last step) and
    `shared` (the State fields every row uses, not per row), and writes `_weights`, `_count`,
    `loss`, `init_state` and `step`."""

    model_type = None
    sizes = ()
    size_defaults = {}
    State = None
    shared = ()

    def __init__(self, word_to_idx, input_dim, num_regions, features, dtype, seed, **sizes):
        self._set_vocabulary(word_to_idx, dtype)
        self.features = region_kind(features).name
        self.place = place_of(features, num_regions)
        self.input_dim, self.num_regions = input_dim, num_regions
        for name in self.sizes:
            setattr(self, name, sizes[name])
        rng = np.random.default_rng(seed)
        params = {"W_embed": rng.standard_normal((len(word_to_idx), self.wordvec_dim)) / 100,
                  **self.place.weights(input_dim, rng),
                  **self._weights(rng, len(word_to_idx), input_dim)}
        self.params = {k: v.astype(self.dtype) for k, v in params.items()}

    def _weights(self, rng, V, D):
        """The weights after W_embed and the place's, drawn from rng in order."""
        raise NotImplementedError

    def config(self):
        """Plain dict that rebuilds this model with `from_config` (weights not included)."""
        return {"model": self.model_type, "features": self.features, "input_dim": self.input_dim,
                **self.place.sizes(), **{k: getattr(self, k) for k in self.sizes},
                "dtype": self.dtype.name, "idx_to_word": list(self.idx_to_word)}

    @classmethod
    def from_config(cls, config, seed=None):
        """Build an untrained model from a `config()` dict (older checkpoints: the model type's
        kind of features and the defaults of sizes they lack)."""
        word_to_idx = {w: i for i, w in enumerate(config["idx_to_word"]) if w is not None}
        features = checkpoint_features(config)
        sizes = {k: config[k] if k in config else cls.size_defaults[k] for k in cls.sizes}
        place = PLACES[region_kind(features).place]
        return cls(word_to_idx, input_dim=config["input_dim"], features=features, **sizes,
                   **place.config_sizes(config), dtype=np.dtype(config.get("dtype", "float32")),
                   seed=seed)

    @classmethod
    def count_parameters(cls, config):
        """Number of weights of the model a `config()` dict describes, without building it."""
        V = sum(w is not None for w in config["idx_to_word"])
        place = PLACES[region_kind(checkpoint_features(config)).place]
        return V * config["wordvec_dim"] + place.count(config) + cls._count(config, V)

    @staticmethod
    def _count(config, V):
        """The number of the weights `_weights` draws."""
        raise NotImplementedError

    def _regions(self, regions):
        """Regions (or a (N, R, D) grid array) -> the regions with their place added, a (N, R, D)
        in the model's dtype, the Regions, and their mask (N, R) bool or None (all are own)."""
        regions = as_regions(regions)
        return self.place.forward(regions, self.params, self.dtype), regions, regions.mask

    def _place_gradients(self, regions, da):
        """da (N, R, D), the gradient of _regions' a -> the place's weight gradients."""
        return self.place.backward(regions, da)

    @staticmethod
    def attention(state):
        """The attention (N, R) over the regions that the last step's word was predicted with."""
        return state.alpha

    def select_state(self, state, rows):
        """Reorder/replicate the batch rows of a decoder state: rows (M,) int -> state for M
        rows."""
        return state._replace(**{name: value[rows] for name, value in state._asdict().items()
                                 if name not in self.shared and value is not None})


def masked_mean(a, mask):
    """a (N, R, D), mask (N, R) bool or None -> the mean of each image's own regions (N, D)."""
    if mask is None:
        return a.mean(axis=1)
    return np.einsum("nr,nrd->nd", mask / mask.sum(axis=1, keepdims=True), a).astype(a.dtype)


def masked_mean_backward(dmean, a, mask):
    """dmean (N, D) -> the gradient (N, R, D) of masked_mean's a."""
    if mask is None:
        return np.broadcast_to(dmean[:, None, :] / a.shape[1], a.shape)
    return ((mask / mask.sum(axis=1, keepdims=True))[:, :, None] * dmean[:, None, :]).astype(
        a.dtype)
