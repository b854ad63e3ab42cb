"""UpDown: the top-down captioning decoder of Anderson et al. (2018) in numpy, its backward pass by
hand (the cell is updown_utils.py, whose docstring writes the equations): an attention LSTM that
decides where to look, from the language LSTM's last state, the mean region and the word, and a
language LSTM that writes from the attended region.

Shape letters: N batch, T time (caption length - 1), R regions, D region feature, W word vector,
A attention, H hidden, V vocabulary.

It reads Regions (core/data/regions.py) and gives each region its place as every region decoder
does (core/model/region_decoder.py: a grid cell's embedding or a box's geometry, v (N, R, D)); an
image's padded regions (its mask) get no attention, no gradient and no part in the mean region. Both LSTMs start
from zero states, as in the paper. The loss is the summed cross-entropy of the next
words per caption (self-critical training weights each caption's).
"""
from typing import NamedTuple

import numpy as np

from core.data.feature_kinds import GRID
from core.model.region_decoder import RegionDecoder, masked_mean
from rnn_utils import word_embedding_backward, word_embedding_forward
from updown_utils import WEIGHTS, updown_backward, updown_forward, updown_step_from_projection


class UpDownState(NamedTuple):
    """Up-Down's decoding state: h1, c1 (N, H) the attention LSTM's, h2, c2 (N, H) the language
    LSTM's; v (N, R, D) the regions with their place; v_proj (N, R, A) their attention projection
    and v_part (N, 4H) the mean region's part of LSTM1's input, computed once per caption; alpha
    (N, R) the attention of the last step (zeros before the first); mask (N, R) bool or None;
    word_inputs: every row's, each word's input projection (V, 4H) = W_embed W1x + b1."""

    h1: object
    c1: object
    h2: object
    c2: object
    v: object
    v_proj: object
    alpha: object
    v_part: object
    mask: object
    word_inputs: object


class UpDown(RegionDecoder):
    """word_to_idx: dict word -> index (V entries, with <NULL>, <START>, <END>); input_dim D (a
    region's features), num_regions R (a grid's cells; boxes: any number), wordvec_dim W,
    hidden_dim H (both LSTMs), attention_dim A, features: the kind of region features it reads."""

    model_type = "updown"
    sizes = ("wordvec_dim", "hidden_dim", "attention_dim")
    State = UpDownState
    shared = ("word_inputs",)

    def __init__(self, word_to_idx, input_dim=64, num_regions=49, wordvec_dim=128, hidden_dim=128,
                 attention_dim=128, dtype=np.float32, seed=None, features=GRID):
        super().__init__(word_to_idx, input_dim, num_regions, features, dtype, seed,
                         wordvec_dim=wordvec_dim, hidden_dim=hidden_dim,
                         attention_dim=attention_dim)

    def _weights(self, rng, V, D):
        W, H, A = self.wordvec_dim, self.hidden_dim, self.attention_dim
        shapes = {"W1x": (W, 4 * H), "W1v": (D, 4 * H), "W1h2": (H, 4 * H), "W1h": (H, 4 * H),
                  "W_va": (D, A), "W_ha": (H, A), "W2v": (D, 4 * H), "W2h1": (H, 4 * H),
                  "W2h": (H, 4 * H)}
        return {**{k: rng.standard_normal(s) / np.sqrt(s[0]) for k, s in shapes.items()},
                "b1": np.zeros(4 * H), "b2": np.zeros(4 * H),
                "w_a": rng.standard_normal(A) / np.sqrt(A),
                "W_vocab": rng.standard_normal((H, V)) / np.sqrt(H), "b_vocab": np.zeros(V)}

    @staticmethod
    def _count(config, V):
        D, W = config["input_dim"], config["wordvec_dim"]
        H, A = config["hidden_dim"], config["attention_dim"]
        lstm1, lstm2 = (W + D + 2 * H + 1) * 4 * H, (D + 2 * H + 1) * 4 * H
        return lstm1 + lstm2 + (D + H + 1) * A + H * V + V

    def loss(self, features, captions, weights=None, smoothing=0.0, inputs=None):
        """Teacher-forced loss and gradients.

        features: Regions (N, R, D) (or a grid's (N, R, D) array), captions (N, T + 1) int,
        weights (N,) or None: each caption's cross-entropy times its weight; smoothing: label
        smoothing of the targets; inputs (N, T) or None: the words fed in instead of
        captions[:, :-1]
        -> loss (float), grads (name -> array like params).
        """
        p = self.params
        v, regions, own = self._regions(features)
        captions_in, captions_out = captions[:, :-1], captions[:, 1:]
        if inputs is not None:  # scheduled sampling: some inputs are the model's own words
            captions_in = inputs
        mask = captions_out != self.null_idx  # (N, T)
        x, embed_cache = word_embedding_forward(captions_in, p["W_embed"])  # (N, T, W)
        h2, _, cache = updown_forward(x, v, *(p[k] for k in WEIGHTS), mask=own)  # (N, T, H)
        grads = {}
        loss, dh2 = self._word_loss(h2, captions_out, mask, weights, grads, smoothing)
        dx, dv, *dweights = updown_backward(dh2, cache)
        grads.update(zip(WEIGHTS, dweights))
        grads["W_embed"] = word_embedding_backward(dx, embed_cache)
        grads.update(self._place_gradients(regions, dv))
        return loss, grads

    def init_state(self, features):
        """features: Regions (N, R, D) -> UpDownState before the first word (both LSTMs start
        from zeros)."""
        p = self.params
        v, _, own = self._regions(features)
        zeros = np.zeros((len(v), self.hidden_dim), dtype=self.dtype)
        return UpDownState(zeros, zeros, zeros, zeros, v, v @ p["W_va"],
                           np.zeros(v.shape[:2], dtype=self.dtype),
                           masked_mean(v, own) @ p["W1v"], own, p["W_embed"] @ p["W1x"] + p["b1"])

    def step(self, words, state, normalized=True):
        """words (N,) int, state -> log-probabilities (N, V) (raw scores when not normalized), new
        state (its alpha the attention (N, R) of this step, which chose the next word)."""
        p = self.params
        h1, c1, h2, c2, alpha, _ = updown_step_from_projection(
            state.word_inputs[words] + state.v_part, state.v, state.v_proj, state.h1, state.c1,
            state.h2, state.c2, p["W1h2"], p["W1h"], p["W_ha"], p["w_a"], p["W2v"], p["W2h1"],
            p["W2h"], p["b2"], state.mask)
        return self._scores(h2, p, normalized), state._replace(h1=h1, c1=c1, h2=h2, c2=c2,
                                                               alpha=alpha)
