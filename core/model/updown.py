"""UpDown: the top-down captioning decoder of Anderson et al. (2018) in numpy, its backward pass by
hand (the cell is updown_utils.py, whose docstring writes the equations): an attention LSTM that
decides where to look, from the language LSTM's last state, the mean region and the word, and a
language LSTM that writes from the attended region.

Shape letters: N batch, T time (caption length - 1), R regions, D region feature, W word vector,
A attention, H hidden, V vocabulary.

The regions get their place added as the attention LSTM's do (core/model/attention_lstm.py): a grid
cell a learned embedding, v = regions + P (P (R, D)); an object region (boxes, N, K, D + 5) a
projection of its box's geometry, v = features + g W_geo (W_geo (5, D)), with a mask that gives an
image's padded boxes no attention, no gradient and no part in the mean region. Both LSTMs start
from zero states, as in the paper. The loss is the summed cross-entropy of the next
words per caption (self-critical training weights each caption's).
"""
import numpy as np

from core.model.attention_lstm import (
    AttentionLSTM, check_region_kind, masked_mean, place_count, place_gradients, place_weights)
from rnn_utils import word_embedding_backward, word_embedding_forward
from updown_utils import WEIGHTS, updown_backward, updown_forward, updown_step_from_projection


class UpDown(AttentionLSTM):
    """word_to_idx: dict word -> index (V entries, with <NULL>, <START>, <END>); input_dim D (a
    region's features), num_regions R (grid regions; boxes: any number), wordvec_dim W, hidden_dim
    H (both LSTMs), attention_dim A, features "grid" or "boxes".
    The region handling (`_regions`), building from a config, decoding state reordering and
    checkpoint arrays are the attention LSTM's."""

    model_type = "updown"
    penalty = False  # no attention penalty: alpha_c is not one of its sizes

    def __init__(self, word_to_idx, input_dim=64, num_regions=49, wordvec_dim=128, hidden_dim=128,
                 attention_dim=128, dtype=np.float32, seed=None, features="grid"):
        self._set_vocabulary(word_to_idx, dtype)
        self.features = check_region_kind(features)
        self.input_dim, self.num_regions, self.wordvec_dim = input_dim, num_regions, wordvec_dim
        self.hidden_dim, self.attention_dim, self.alpha_c = hidden_dim, attention_dim, 0.0
        rng = np.random.default_rng(seed)
        V, D, W, H, A = len(word_to_idx), input_dim, wordvec_dim, hidden_dim, attention_dim
        shapes = {"W1x": (W, 4 * H), "W1v": (D, 4 * H), "W1h2": (H, 4 * H), "W1h": (H, 4 * H),
                  "W_va": (D, A), "W_ha": (H, A), "W2v": (D, 4 * H), "W2h1": (H, 4 * H),
                  "W2h": (H, 4 * H)}
        self.params = {"W_embed": rng.standard_normal((V, W)) / 100,
                       **place_weights(features, num_regions, D, rng),
                       **{k: rng.standard_normal(s) / np.sqrt(s[0]) for k, s in shapes.items()},
                       "b1": np.zeros(4 * H), "b2": np.zeros(4 * H),
                       "w_a": rng.standard_normal(A) / np.sqrt(A),
                       "W_vocab": rng.standard_normal((H, V)) / np.sqrt(H), "b_vocab": np.zeros(V)}
        self.params = {k: v.astype(self.dtype) for k, v in self.params.items()}

    def config(self):
        """Plain dict that rebuilds this model with `from_config` (weights not included)."""
        config = super().config()
        del config["alpha_c"]
        return config

    @staticmethod
    def count_parameters(config):
        """Number of weights of the model a `config()` dict describes, without building it."""
        V = sum(w is not None for w in config["idx_to_word"])
        D, W = config["input_dim"], config["wordvec_dim"]
        H, A = config["hidden_dim"], config["attention_dim"]
        lstm1, lstm2 = (W + D + 2 * H + 1) * 4 * H, (D + 2 * H + 1) * 4 * H
        return place_count(config) + V * W + lstm1 + lstm2 + (D + H + 1) * A + H * V + V

    def loss(self, features, captions, weights=None, smoothing=0.0, inputs=None):
        """Teacher-forced loss and gradients.

        features (N, R, D) regions, captions (N, T + 1) int, weights (N,) or None: each caption's
        cross-entropy times its weight; smoothing: label smoothing of the targets; inputs (N, T) or
        None: the words fed in instead of captions[:, :-1]
        -> loss (float), grads (name -> array like params).
        """
        p = self.params
        v, regions = self._regions(features)
        captions_in, captions_out = captions[:, :-1], captions[:, 1:]
        if inputs is not None:  # scheduled sampling: some inputs are the model's own words
            captions_in = inputs
        mask = captions_out != self.null_idx  # (N, T)
        x, embed_cache = word_embedding_forward(captions_in, p["W_embed"])  # (N, T, W)
        h2, _, cache = updown_forward(x, v, *(p[k] for k in WEIGHTS), mask=regions)  # (N, T, H)
        grads = {}
        loss, dh2 = self._word_loss(h2, captions_out, mask, weights, grads, smoothing)
        dx, dv, *dweights = updown_backward(dh2, cache)
        grads.update(zip(WEIGHTS, dweights))
        grads["W_embed"] = word_embedding_backward(dx, embed_cache)
        grads.update(place_gradients(features, self.features, dv))
        return loss, grads

    def init_state(self, features):
        """features (N, R, D) or boxes (N, K, D + 5) -> decoder state before the first word: (h1,
        c1, h2, c2, v, v_proj, alpha, v_part, mask, shared) with the regions' attention projection
        v_proj (N, R, A) and the mean region's part of LSTM1's input v_part (N, 4H) computed once
        per caption, alpha (N, R) the last step's attention (zeros before the first), mask (N, R)
        the image's own regions (None for a grid) and `shared` each word's input projection
        (V, 4H) = W_embed W1x + b1."""
        p = self.params
        v, regions = self._regions(features)
        zeros = np.zeros((len(v), self.hidden_dim), dtype=self.dtype)
        return (zeros, zeros, zeros, zeros, v, v @ p["W_va"],
                np.zeros(v.shape[:2], dtype=self.dtype),
                masked_mean(v, regions) @ p["W1v"], regions, p["W_embed"] @ p["W1x"] + p["b1"])

    def step(self, words, state, normalized=True):
        """words (N,) int, state -> log-probabilities (N, V) (raw scores when not normalized), new
        state (its alpha the attention (N, R) of this step, which chose the next word)."""
        p = self.params
        h1, c1, h2, c2, v, v_proj, _, v_part, regions, word_inputs = state
        h1, c1, h2, c2, alpha, _ = updown_step_from_projection(
            word_inputs[words] + v_part, v, v_proj, h1, c1, h2, c2, p["W1h2"], p["W1h"], p["W_ha"],
            p["w_a"], p["W2v"], p["W2h1"], p["W2h"], p["b2"], regions)
        return self._scores(h2, p, normalized), (h1, c1, h2, c2, v, v_proj, alpha, v_part,
                                                 regions, word_inputs)

    @staticmethod
    def attention(state):
        """The attention (N, R) over the regions of the last step (the one its word came from)."""
        return state[6]
