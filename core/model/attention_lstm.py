"""AttentionLSTM: a soft-attention LSTM caption decoder over image regions ("Show, Attend and Tell",
Xu et al. 2015) in numpy, hand-written backward pass (the cell is attention_lstm_utils.py).

Shape letters: N batch, T time (caption length - 1), R regions, D region feature, W word vector,
A attention, H hidden, V vocabulary.

It reads Regions (core/data/regions.py) and gives each region its place as every region decoder
does (core/model/region_decoder.py: a grid cell's embedding or a box's geometry, a (N, R, D)), and
an image's padded regions (its mask) get no attention, no gradient and no part in the mean.
The regions set the initial state from their mean, h0 = tanh(mean_i a_i W_init_h + b_init_h) and c0
alike; at every step the previous hidden state weighs the regions (alpha, (N, R)) and the gated,
weighted mean of the regions enters the LSTM with the word. The loss is the summed cross-entropy of
the next words per caption plus the doubly stochastic attention penalty alpha_c * mean_i (1 - sum_t
alpha_ti) ** 2 (t over a caption's words, i over the regions), which asks every region to be looked
at about once over the caption. The mean rather than the paper's sum, as in the widely used PyTorch
port:
with R = 49 regions and 10-word captions the sum outweighs the words.
"""
from typing import NamedTuple

import numpy as np

from attention_lstm_utils import (
    WEIGHTS, att_lstm_backward, att_lstm_forward, att_lstm_step_from_projection, stack_h_weights)
from core.data.feature_kinds import GRID
from core.layers.rnn_layers import affine_backward, affine_forward
from core.model.region_decoder import RegionDecoder, masked_mean, masked_mean_backward
from rnn_utils import word_embedding_backward, word_embedding_forward


class AttentionState(NamedTuple):
    """The attention LSTM's decoding state: h, c (N, H); a (N, R, D) the regions with their place;
    a_proj (N, R, A) their attention projection, computed once per caption; alpha (N, R) the
    attention of the last step (zeros before the first); mask (N, R) bool or None; shared: what
    every row uses, each word's input projection (V, 4H) = W_embed Wx + b and the stacked weights
    of h (attention_lstm_utils.stack_h_weights)."""

    h: object
    c: object
    a: object
    a_proj: object
    alpha: object
    mask: object
    shared: object


class AttentionLSTM(RegionDecoder):
    """word_to_idx: dict word -> index (V entries, with <NULL>, <START>, <END>); input_dim D (a
    region's features), num_regions R (a grid's cells; boxes: any number), wordvec_dim W,
    hidden_dim H, attention_dim A, alpha_c: weight of the attention penalty; features: the kind of
    region features it reads (core/data/feature_kinds.py)."""

    model_type = "attention_lstm"
    sizes = ("wordvec_dim", "hidden_dim", "attention_dim", "alpha_c")
    size_defaults = {"alpha_c": 1.0}
    State = AttentionState
    shared = ("shared",)

    def __init__(self, word_to_idx, input_dim=64, num_regions=49, wordvec_dim=128, hidden_dim=128,
                 attention_dim=128, alpha_c=1.0, dtype=np.float32, seed=None, features=GRID):
        super().__init__(word_to_idx, input_dim, num_regions, features, dtype, seed,
                         wordvec_dim=wordvec_dim, hidden_dim=hidden_dim,
                         attention_dim=attention_dim, alpha_c=float(alpha_c))

    def _weights(self, rng, V, D):
        W, H, A = self.wordvec_dim, self.hidden_dim, self.attention_dim
        return {
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

    @staticmethod
    def _count(config, V):
        D, W = config["input_dim"], config["wordvec_dim"]
        H, A = config["hidden_dim"], config["attention_dim"]
        init, lstm, attention = 2 * (D * H + H), (W + D + H + 1) * 4 * H, (D + 1 + H + 1) * A
        return init + lstm + attention + H + 1 + H * V + V

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

        features: Regions (N, R, D) (or a grid's (N, R, D) array), captions (N, T + 1) int,
        weights (N,) or None: each caption's cross-entropy times its weight (self-critical
        training; the attention penalty is then left out, as it is not part of the reward);
        smoothing: label smoothing of the targets; inputs (N, T) or None: the words fed in instead
        of captions[:, :-1]
        -> loss (float), grads (name -> array like params).
        """
        p = self.params
        a, regions, own = self._regions(features)
        captions_in, captions_out = captions[:, :-1], captions[:, 1:]
        if inputs is not None:  # scheduled sampling: some inputs are the model's own words
            captions_in = inputs
        mask = captions_out != self.null_idx  # (N, T)
        h0, c0, init_cache = self._initial_state(a, own)
        x, embed_cache = word_embedding_forward(captions_in, p["W_embed"])  # (N, T, W)
        # (N, T, H), (N, T, R)
        h, alpha, cache = att_lstm_forward(x, a, h0, c0, *(p[k] for k in WEIGHTS), mask=own)
        grads = {}
        loss, dh = self._word_loss(h, captions_out, mask, weights, grads, smoothing)
        dalpha = None
        if self.alpha_c and weights is None:
            penalty, dalpha = self._penalty(alpha, mask, regions.own())
            loss += penalty
        dx, da, dh0, dc0, *dweights = att_lstm_backward(dh, dalpha, cache)
        grads.update(zip(WEIGHTS, dweights))
        grads["W_embed"] = word_embedding_backward(dx, embed_cache)
        h_cache, c_cache = init_cache
        dmean_h, grads["W_init_h"], grads["b_init_h"] = affine_backward(dh0 * (1 - h0 * h0),
                                                                        h_cache)
        dmean_c, grads["W_init_c"], grads["b_init_c"] = affine_backward(dc0 * (1 - c0 * c0),
                                                                        c_cache)
        da += masked_mean_backward(dmean_h + dmean_c, a, own)
        grads.update(self._place_gradients(regions, da))
        return loss, grads

    def _penalty(self, alpha, mask, own):
        """The doubly stochastic attention penalty: alpha (N, T, R), mask (N, T) of the caption's
        words, own (N, R) an image's own regions -> penalty (float), dalpha (N, T, R)."""
        m = mask.astype(self.dtype)
        own = own.astype(self.dtype)
        # (N, R): how far each of an image's own regions is from one look
        left = (1 - np.einsum("nt,ntr->nr", m, alpha)) * own
        count = float(own.sum())  # N R for a grid
        penalty = self.alpha_c * float((left * left).sum()) / count
        return penalty, (-2 * self.alpha_c / count) * left[:, None, :] * m[:, :, None]

    def init_state(self, features):
        """features: Regions (N, R, D) -> AttentionState before the first word."""
        p = self.params
        a, _, own = self._regions(features)
        h0, c0, _ = self._initial_state(a, own)
        shared = (p["W_embed"] @ p["Wx"] + p["b"],
                  *stack_h_weights(p["Wh"], p["W_att_h"], p["w_beta"], p["b_beta"]))
        return AttentionState(h0, c0, a, a @ p["W_att_a"] + p["b_att"],
                              np.zeros(a.shape[:2], dtype=self.dtype), own, shared)

    def step(self, words, state, normalized=True):
        """words (N,) int, state -> log-probabilities (N, V) (raw scores when not normalized), new
        state (its alpha the attention (N, R) this word was predicted with)."""
        p = self.params
        word_inputs, Wh_cat, bh_cat = state.shared
        h, c, alpha, _ = att_lstm_step_from_projection(word_inputs[words], state.a, state.a_proj,
                                                       state.h, state.c, p["Wz"], Wh_cat, bh_cat,
                                                       p["w_att"], state.mask)
        return self._scores(h, p, normalized), state._replace(h=h, c=c, alpha=alpha)
