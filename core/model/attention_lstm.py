"""AttentionLSTM: a soft-attention LSTM caption decoder over image regions ("Show, Attend and Tell",
Xu et al. 2015) in numpy, hand-written backward pass (the cell is attention_lstm_utils.py).

Shape letters: N batch, T time (caption length - 1), R regions, D region feature, W word vector,
A attention, H hidden, V vocabulary.

The regions get their place added, so that what the decoder reads from a region says where it is
("to the left of" needs that; a convolutional feature alone hardly does): grid regions (N, R, D)
(core/data/features.py) a learned embedding of their cell, a = regions + P (P (R, D)); object
regions (N, K, D + 5) (core/data/boxes.py: each box's feature, then its geometry g = (x0 / W,
y0 / H, x1 / W, y1 / H, area)) a projection of their box, a = features + g W_geo (W_geo (5, D)), and
a mask: an image's padded boxes (all zero) get no attention, no gradient and no part in the mean.
The regions set the initial state from their mean, h0 = tanh(mean_i a_i W_init_h + b_init_h) and c0
alike; at every step the previous hidden state weighs the regions (alpha, (N, R)) and the gated,
weighted mean of the regions enters the LSTM with the word. The loss is the summed cross-entropy of
the next words per caption plus the doubly stochastic attention penalty alpha_c * mean_i (1 - sum_t
alpha_ti) ** 2 (t over a caption's words, i over the regions), which asks every region to be looked
at about once over the caption. The mean rather than the paper's sum, as in the widely used PyTorch
port:
with R = 49 regions and 10-word captions the sum outweighs the words.
"""
import numpy as np

from attention_lstm_utils import (
    WEIGHTS, att_lstm_backward, att_lstm_forward, att_lstm_step_from_projection, stack_h_weights)
from core.data.boxes import GEOMETRY, box_mask
from core.layers.rnn_layers import affine_backward, affine_forward
from core.model.rnn_model import NumpyDecoder
from rnn_utils import word_embedding_backward, word_embedding_forward


class AttentionLSTM(NumpyDecoder):
    """word_to_idx: dict word -> index (V entries, with <NULL>, <START>, <END>); input_dim D (a
    region's features), num_regions R (grid regions; boxes: any number), wordvec_dim W, hidden_dim
    H, attention_dim A, alpha_c: weight of the attention penalty; features: "grid" or "boxes"."""

    model_type = "attention_lstm"
    penalty = True  # alpha_c is one of its sizes

    def __init__(self, word_to_idx, input_dim=64, num_regions=49, wordvec_dim=128, hidden_dim=128,
                 attention_dim=128, alpha_c=1.0, dtype=np.float32, seed=None, features="grid"):
        self._set_vocabulary(word_to_idx, dtype)
        self.features = check_region_kind(features)
        self.input_dim, self.num_regions, self.wordvec_dim = input_dim, num_regions, wordvec_dim
        self.hidden_dim, self.attention_dim = hidden_dim, attention_dim
        self.alpha_c = float(alpha_c)
        rng = np.random.default_rng(seed)
        V, D, W, H, A = len(word_to_idx), input_dim, wordvec_dim, hidden_dim, attention_dim
        self.params = {
            "W_embed": rng.standard_normal((V, W)) / 100,
            **place_weights(features, num_regions, D, rng),
            "W_init_h": rng.standard_normal((D, H)) / np.sqrt(D), "b_init_h": np.zeros(H),
            "W_init_c": rng.standard_normal((D, H)) / np.sqrt(D), "b_init_c": np.zeros(H),
            "Wx": rng.standard_normal((W, 4 * H)) / np.sqrt(W),
            "Wz": rng.standard_normal((D, 4 * H)) / np.sqrt(D),
            "Wh": rng.standard_normal((H, 4 * H)) / np.sqrt(H),
            "b": np.zeros(4 * H),
            "W_att_a": rng.standard_normal((D, A)) / np.sqrt(D), "b_att": np.zeros(A),
            "W_att_h": rng.standard_normal((H, A)) / np.sqrt(H),
            "w_att": rng.standard_normal(A) / np.sqrt(A),
            "w_beta": np.zeros(H), "b_beta": np.zeros(1),
            "W_vocab": rng.standard_normal((H, V)) / np.sqrt(H), "b_vocab": np.zeros(V),
        }
        self.params = {k: v.astype(self.dtype) for k, v in self.params.items()}

    def config(self):
        """Plain dict that rebuilds this model with `from_config` (weights not included)."""
        regions = {"num_regions": self.num_regions} if self.features == "grid" else {}
        return {"model": self.model_type, "features": self.features, "input_dim": self.input_dim,
                **regions, "wordvec_dim": self.wordvec_dim,
                "hidden_dim": self.hidden_dim, "attention_dim": self.attention_dim,
                "alpha_c": self.alpha_c, "dtype": self.dtype.name,
                "idx_to_word": list(self.idx_to_word)}

    @classmethod
    def from_config(cls, config, seed=None):
        """Build an untrained model from a `config()` dict."""
        word_to_idx = {w: i for i, w in enumerate(config["idx_to_word"]) if w is not None}
        sizes = {k: config[k] for k in ("input_dim", "wordvec_dim", "hidden_dim", "attention_dim")}
        sizes["features"] = config.get("features", "grid")
        if sizes["features"] == "grid":
            sizes["num_regions"] = config["num_regions"]
        if cls.penalty:  # the doubly stochastic attention penalty's weight
            sizes["alpha_c"] = config.get("alpha_c", 1.0)
        return cls(word_to_idx, **sizes, dtype=np.dtype(config.get("dtype", "float32")), seed=seed)

    @staticmethod
    def count_parameters(config):
        """Number of weights of the model a `config()` dict describes, without building it."""
        V = sum(w is not None for w in config["idx_to_word"])
        D, W = config["input_dim"], config["wordvec_dim"]
        H, A = config["hidden_dim"], config["attention_dim"]
        place, words, init = place_count(config), V * W, 2 * (D * H + H)
        lstm, attention = (W + D + H + 1) * 4 * H, (D + 1 + H + 1) * A
        gate, output = H + 1, H * V + V
        return place + words + init + lstm + attention + gate + output

    def _regions(self, features):
        """features (N, R, D) grid regions or (N, K, D + 5) boxes -> the regions with their place
        added, a (N, R, D) in the model's dtype, and the mask (N, R) bool of an image's own regions
        (None for a grid: all are)."""
        return regions_with_place(features, self.features, self.params, self.input_dim,
                                  self.dtype)

    def _initial_state(self, a, mask):
        """a (N, R, D), mask (N, R) or None -> h0, c0 (N, H) from the mean region (of the image's
        own), and the caches of their layers."""
        p = self.params
        mean = masked_mean(a, mask)  # (N, D)
        h_pre, h_cache = affine_forward(mean, p["W_init_h"], p["b_init_h"])
        c_pre, c_cache = affine_forward(mean, p["W_init_c"], p["b_init_c"])
        return np.tanh(h_pre), np.tanh(c_pre), (h_cache, c_cache)

    def loss(self, features, captions, weights=None, smoothing=0.0, inputs=None):
        """Teacher-forced loss and gradients.

        features (N, R, D) regions, captions (N, T + 1) int, weights (N,) or None: each caption's
        cross-entropy times its weight (self-critical training; the attention penalty is then left
        out, as it is not part of the reward); smoothing: label smoothing of the targets; inputs
        (N, T) or None: the words fed in instead of captions[:, :-1]
        -> loss (float), grads (name -> array like params).
        """
        p = self.params
        a, regions = self._regions(features)
        N, R, _ = a.shape
        captions_in, captions_out = captions[:, :-1], captions[:, 1:]
        if inputs is not None:  # scheduled sampling: some inputs are the model's own words
            captions_in = inputs
        mask = captions_out != self.null_idx  # (N, T)
        h0, c0, init_cache = self._initial_state(a, regions)
        x, embed_cache = word_embedding_forward(captions_in, p["W_embed"])  # (N, T, W)
        # (N, T, H), (N, T, R)
        h, alpha, cache = att_lstm_forward(x, a, h0, c0, *(p[k] for k in WEIGHTS), mask=regions)
        grads = {}
        loss, dh = self._word_loss(h, captions_out, mask, weights, grads, smoothing)
        dalpha = None
        if self.alpha_c and weights is None:
            m = mask.astype(self.dtype)
            own = np.ones((N, R), self.dtype) if regions is None else regions.astype(self.dtype)
            # (N, R): how far each of an image's own regions is from one look
            left = (1 - np.einsum("nt,ntr->nr", m, alpha)) * own
            count = float(own.sum())  # N R for a grid
            loss += self.alpha_c * float((left * left).sum()) / count
            dalpha = (-2 * self.alpha_c / count) * left[:, None, :] * m[:, :, None]  # (N, T, R)
        dx, da, dh0, dc0, *dweights = att_lstm_backward(dh, dalpha, cache)
        grads.update(zip(WEIGHTS, dweights))
        grads["W_embed"] = word_embedding_backward(dx, embed_cache)
        h_cache, c_cache = init_cache
        dmean_h, grads["W_init_h"], grads["b_init_h"] = affine_backward(dh0 * (1 - h0 * h0),
                                                                        h_cache)
        dmean_c, grads["W_init_c"], grads["b_init_c"] = affine_backward(dc0 * (1 - c0 * c0),
                                                                        c_cache)
        da += masked_mean_backward(dmean_h + dmean_c, a, regions)
        grads.update(place_gradients(features, self.features, da))
        return loss, grads

    def init_state(self, features):
        """features (N, R, D) -> decoder state before the first word: (h, c, a, a_proj, alpha,
        shared) with the regions' attention projection a_proj (N, R, A) computed once per caption,
        alpha (N, R) the last step's attention (zeros before the first) and `shared` what every row
        uses: each word's input projection (V, 4H) = W_embed Wx + b and the stacked weights of h
        (stack_h_weights)."""
        p = self.params
        a, regions = self._regions(features)
        h0, c0, _ = self._initial_state(a, regions)
        shared = (p["W_embed"] @ p["Wx"] + p["b"],
                  *stack_h_weights(p["Wh"], p["W_att_h"], p["w_beta"], p["b_beta"]))
        return (h0, c0, a, a @ p["W_att_a"] + p["b_att"], np.zeros(a.shape[:2], dtype=self.dtype),
                regions, shared)

    def step(self, words, state, normalized=True):
        """words (N,) int, state -> log-probabilities (N, V) (raw scores when not normalized), new
        state (its alpha the attention (N, R) this word was predicted with)."""
        p = self.params
        h, c, a, a_proj, _, regions, shared = state
        word_inputs, Wh_cat, bh_cat = shared
        h, c, alpha, _ = att_lstm_step_from_projection(word_inputs[words], a, a_proj, h, c, p["Wz"],
                                                       Wh_cat, bh_cat, p["w_att"], regions)
        return self._scores(h, p, normalized), (h, c, a, a_proj, alpha, regions, shared)

    @staticmethod
    def attention(state):
        """The attention (N, R) over the regions that the last step's word was predicted with."""
        return state[4]

    def select_state(self, state, rows):
        """Reorder/replicate the batch rows of a decoder state: rows (M,) int -> state for M
        rows."""
        *per_row, shared = state
        return (*(None if s is None else s[rows] for s in per_row), shared)


REGION_KINDS = ("grid", "boxes")


def check_region_kind(features):
    """features: "grid" or "boxes" -> the same; ValueError for another."""
    if features not in REGION_KINDS:
        raise ValueError(f'a region decoder reads {" or ".join(REGION_KINDS)} features, not '
                         f'"{features}"')
    return features


def place_weights(features, num_regions, D, rng):
    """The weights that give a region its place: {"P": (R, D)} for a grid (a learned embedding of
    each cell), {"W_geo": (5, D)} for boxes (a projection of the box's geometry)."""
    if features == "boxes":
        return {"W_geo": rng.standard_normal((GEOMETRY, D)) / np.sqrt(GEOMETRY)}
    return {"P": rng.standard_normal((num_regions, D)) / 10}


def place_count(config):
    """The number of weights of place_weights for a model config."""
    rows = GEOMETRY if config.get("features", "grid") == "boxes" else config["num_regions"]
    return rows * config["input_dim"]


def regions_with_place(features, kind, params, D, dtype):
    """features (N, R, D) grid regions or (N, K, D + 5) boxes, kind "grid" or "boxes", the model's
    params (P or W_geo), D, dtype -> a (N, R, D) = regions + P or features + g W_geo (zero for
    padding), mask (N, R) bool (None for a grid); ValueError when the shape does not fit."""
    if kind == "boxes":
        if features.ndim != 3 or features.shape[2] != D + GEOMETRY:
            raise ValueError(f"box features of shape {features.shape[1:]} per image do not fit "
                             f"this model's (boxes, {D} + {GEOMETRY}) (features, then geometry)")
        f = features.astype(dtype, copy=False)
        return f[..., :D] + f[..., D:] @ params["W_geo"], box_mask(f)
    if features.shape[1:] != params["P"].shape:
        raise ValueError(f"region features of shape {features.shape[1:]} per image do not fit "
                         f"this model's {params['P'].shape} (regions, dimensions)")
    return features.astype(dtype, copy=False) + params["P"], None


def place_gradients(features, kind, da):
    """The gradients of place_weights from da (N, R, D), the gradient of regions_with_place's a."""
    if kind == "boxes":
        D = da.shape[2]
        geometry = features[..., D:].astype(da.dtype, copy=False)  # (N, K, 5)
        return {"W_geo": np.einsum("nkg,nkd->gd", geometry, da)}
    return {"P": da.sum(axis=0)}


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
