"""CaptioningRNN: a vanilla-RNN, LSTM or GRU caption decoder in numpy, hand-written backward pass.

Shape letters: N batch, T time (caption length - 1), D image feature, W word vector,
H hidden, V vocabulary.

The image feature sets the initial hidden state, h0 = features W_proj + b_proj; the
decoder reads the caption shifted right (<START> w1 w2 ...) and is trained to predict
it shifted left (w1 w2 ... <END>), with <NULL> padding masked out of the loss.
"""
import contextlib
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from core.data.vocab import index_vocabulary
from core.model.decoding import decode
from core.layers.rnn_layers import affine_backward, affine_forward, softmax_loss
from gru_utils import gru_backward, gru_forward, gru_step_from_projection
from lstm_utils import lstm_backward, lstm_forward, lstm_step_from_projection
from rnn_utils import (
    rnn_backward,
    rnn_forward,
    rnn_step_from_projection,
    word_embedding_backward,
    word_embedding_forward,
)


class RNNState(NamedTuple):
    """The decoding state of CaptioningRNN: h (N, H), c (N, H) (zeros for the cells without one),
    and every row's word_inputs (V, G), each word's input projection."""

    h: object
    c: object
    word_inputs: object


@dataclass(frozen=True)
class Cell:
    """One recurrent cell type: its gate width G = gates * H, the names of its weights (inputs of
    forward after x and h0, in order; gradients of backward after dx and dh0, in the same order),
    the whole-sequence forward/backward pair, and one decoding step:
    step(xa (N, G), h (N, H), c (N, H), params) -> (h, c), where xa = x Wx + b and c is the cell
    state (kept as zeros by cells that have none)."""

    gates: int
    weights: tuple
    forward: Callable
    backward: Callable
    step: Callable


CELLS = {
    "rnn": Cell(1, ("Wx", "Wh", "b"), rnn_forward, rnn_backward,
                lambda xa, h, c, p: (rnn_step_from_projection(xa, h, p["Wh"]), c)),
    "lstm": Cell(4, ("Wx", "Wh", "b"), lstm_forward, lstm_backward,
                 lambda xa, h, c, p: lstm_step_from_projection(xa, h, c, p["Wh"])[:2]),
    "gru": Cell(3, ("Wx", "Wh", "b", "bh"), gru_forward, gru_backward,
                lambda xa, h, c, p: (gru_step_from_projection(xa, h, p["Wh"], p["bh"])[0], c)),
}


class NumpyDecoder:
    """What the numpy decoders share: the vocabulary, weights in `self.params` (name -> array) and
    their checkpoint arrays, and decoding through core/model/decoding.py."""

    max_length = None  # no position limit: it decodes captions of any length

    def _set_vocabulary(self, word_to_idx, dtype):
        self.dtype = np.dtype(dtype)
        self.word_to_idx = dict(word_to_idx)
        vocabulary = index_vocabulary(word_to_idx)
        self.idx_to_word, self.null_idx, self.start_idx, self.end_idx = vocabulary

    def state_arrays(self):
        """The weights by name (name -> array), as a checkpoint stores them."""
        return {k: np.ascontiguousarray(v) for k, v in self.params.items()}

    def load_state_arrays(self, arrays):
        """Set the weights from name -> array (as `state_arrays` gives them), each cast to the
        model's dtype; ValueError for a missing, extra, wrongly shaped or non-float array."""
        if set(arrays) != set(self.params):
            raise ValueError(f"arrays {sorted(arrays)} do not match the parameters "
                             f"{sorted(self.params)}")
        for name, value in self.params.items():
            new = np.asarray(arrays[name])
            if new.dtype.kind != "f":
                raise ValueError(f"parameter {name} has dtype {new.dtype}, not a floating-point "
                                 f"type")
            if new.shape != value.shape:
                raise ValueError(f"parameter {name} has shape {new.shape}, expected {value.shape}")
        self.params = {name: np.asarray(arrays[name]).astype(self.dtype) for name in self.params}

    def decoding(self):
        """Context for decoding (nothing to switch for a numpy model)."""
        return contextlib.nullcontext()

    @staticmethod
    def _scores(h, p, normalized):
        """h (N, H) -> the vocabulary scores h W_vocab + b_vocab (N, V), as log-probabilities when
        normalized."""
        scores = h @ p["W_vocab"] + p["b_vocab"]  # (N, V)
        if normalized:
            scores -= scores.max(axis=1, keepdims=True)
            scores -= np.log(np.exp(scores).sum(axis=1, keepdims=True))
        return scores

    def _word_loss(self, h, captions_out, mask, weights, grads, smoothing=0.0):
        """The summed cross-entropy of the next words from the hidden states, divided by N.

        h (N, T, H), captions_out (N, T) targets, mask (N, T) where there is one, weights (N,) or
        None, smoothing: label smoothing (core.layers.rnn_layers.softmax_loss)
        -> loss (float), dh (N, T, H); sets grads["W_vocab"], grads["b_vocab"].
        Scores are needed only where there is a target word: just those rows are projected, which
        is the temporal affine + masked softmax loss without the masked-out work.
        """
        p = self.params
        N, T, H = h.shape
        rows = np.flatnonzero(mask.reshape(N * T))  # (M,)
        # (M, V)
        scores, vocab_cache = affine_forward(h.reshape(N * T, H)[rows], p["W_vocab"], p["b_vocab"])
        # (M,) of each row's caption
        row_weights = None if weights is None else np.repeat(np.asarray(weights), T)[rows]
        loss, dscores = softmax_loss(scores, captions_out.reshape(N * T)[rows], N, row_weights,
                                     smoothing)
        dh_rows, grads["W_vocab"], grads["b_vocab"] = affine_backward(dscores, vocab_cache)
        dh = np.zeros((N * T, H), dtype=dh_rows.dtype)
        dh[rows] = dh_rows
        return loss, dh.reshape(N, T, H)

    def sample(self, features, max_length=30, beam_size=1, length_penalty=0.0, **options):
        """Decode captions (greedy with beam_size 1, else beam search; see core/model/decoding.py).

        features (N, ...) as the model's loss takes them -> captions (N, max_length) int64: each row
        is the words after <START>, ending with <END> where the model produced it and <NULL> after
        that.
        """
        return decode(self, features, max_length, beam_size, length_penalty, **options)


class CaptioningRNN(NumpyDecoder):
    """Recurrent caption decoder with parameters in `self.params` (name -> array).

    word_to_idx: dict word -> index, V entries, with <NULL> (and <START>, <END> to sample).
    input_dim D, wordvec_dim W, hidden_dim H; cell_type a key of CELLS ("rnn", "lstm", "gru").
    """

    def __init__(self, word_to_idx, input_dim=512, wordvec_dim=128, hidden_dim=128,
                 cell_type="rnn", dtype=np.float32, seed=None):
        if cell_type not in CELLS:
            raise ValueError(f'cell_type must be one of {tuple(CELLS)}, got "{cell_type}"')
        self.cell_type = cell_type
        self._set_vocabulary(word_to_idx, dtype)
        self.input_dim, self.wordvec_dim, self.hidden_dim = input_dim, wordvec_dim, hidden_dim

        rng = np.random.default_rng(seed)
        V, D, W, H = len(word_to_idx), input_dim, wordvec_dim, hidden_dim
        self.cell = CELLS[cell_type]
        G = self.cell.gates * H
        self.params = {
            "W_embed": rng.standard_normal((V, W)) / 100,
            "W_proj": rng.standard_normal((D, H)) / np.sqrt(D),
            "b_proj": np.zeros(H),
            "Wx": rng.standard_normal((W, G)) / np.sqrt(W),
            "Wh": rng.standard_normal((H, G)) / np.sqrt(H),
            "b": np.zeros(G),
            # further biases (the GRU's bh)
            **{name: np.zeros(G) for name in self.cell.weights[3:]},
            "W_vocab": rng.standard_normal((H, V)) / np.sqrt(H),
            "b_vocab": np.zeros(V),
        }
        self.params = {k: v.astype(self.dtype) for k, v in self.params.items()}

    @property
    def model_type(self):
        """"rnn", "lstm" or "gru": its row in core.model.registry.MODEL_TYPES."""
        return self.cell_type

    def config(self):
        """Plain dict that rebuilds this model with `from_config` (weights not included)."""
        return {
            "model": self.cell_type,
            "input_dim": self.input_dim,
            "wordvec_dim": self.wordvec_dim,
            "hidden_dim": self.hidden_dim,
            "dtype": self.dtype.name,
            "idx_to_word": list(self.idx_to_word),
        }

    @classmethod
    def from_config(cls, config, seed=None):
        """Build an untrained model from a `config()` dict (dtype float32 when it names none)."""
        word_to_idx = {w: i for i, w in enumerate(config["idx_to_word"]) if w is not None}
        return cls(word_to_idx, input_dim=config["input_dim"], wordvec_dim=config["wordvec_dim"],
                   hidden_dim=config["hidden_dim"], cell_type=config["model"],
                   dtype=np.dtype(config.get("dtype", "float32")), seed=seed)

    @staticmethod
    def count_parameters(config):
        """Number of weights of the model a `config()` dict describes, without building it."""
        V = sum(w is not None for w in config["idx_to_word"])
        D, W, H = config["input_dim"], config["wordvec_dim"], config["hidden_dim"]
        cell = CELLS[config["model"]]
        G = cell.gates * H
        return V * W + D * H + H + (W + H + len(cell.weights) - 2) * G + H * V + V

    def loss(self, features, captions, weights=None, smoothing=0.0, inputs=None):
        """Teacher-forced loss and gradients.

        features (N, D), captions (N, T + 1) int, weights (N,) or None: each caption's
        cross-entropy is multiplied by its weight (self-critical training passes reward - baseline);
        smoothing: label smoothing of the targets (0: plain cross-entropy); inputs (N, T) or None:
        the words fed in instead of captions[:, :-1] (the targets stay captions[:, 1:])
        -> loss (float), grads (name -> array like params).
        """
        p = self.params
        captions_in, captions_out = captions[:, :-1], captions[:, 1:]
        if inputs is not None:  # scheduled sampling: some inputs are the model's own words
            captions_in = inputs
        mask = captions_out != self.null_idx

        h0, proj_cache = affine_forward(features.astype(self.dtype, copy=False), p["W_proj"],
                                        p["b_proj"])
        x, embed_cache = word_embedding_forward(captions_in, p["W_embed"])  # (N, T, W)
        h, rnn_cache = self.cell.forward(x, h0, *(p[k] for k in self.cell.weights))  # (N, T, H)
        grads = {}
        loss, dh = self._word_loss(h, captions_out, mask, weights, grads, smoothing)
        dx, dh0, *dweights = self.cell.backward(dh, rnn_cache)
        grads.update(zip(self.cell.weights, dweights))
        grads["W_embed"] = word_embedding_backward(dx, embed_cache)
        _, grads["W_proj"], grads["b_proj"] = affine_backward(dh0, proj_cache)
        return loss, grads

    def init_state(self, features):
        """features (N, D) -> RNNState before the first word: h (N, H), c (N, H), word_inputs.

        word_inputs (V, G) = W_embed Wx + b is every word's input projection (G = H for the
        RNN, 4H for the LSTM, 3H for the GRU), computed once per decoding: a step then looks its
        words' rows up, since W_embed[w] Wx + b == word_inputs[w], instead of a matrix product per
        step.
        """
        p = self.params
        h0 = features.astype(self.dtype, copy=False) @ p["W_proj"] + p["b_proj"]
        return RNNState(h0, np.zeros_like(h0), p["W_embed"] @ p["Wx"] + p["b"])

    def step(self, words, state, normalized=True):
        """Advance the decoder by one word.

        words (N,) int, state from `init_state`/`step` -> log-probabilities (N, V) (with normalized
        False the raw scores, whose argmax is the same: all greedy decoding needs), new state.
        """
        p = self.params
        # word_inputs[words]: (N, G) input projections
        h, c = self.cell.step(state.word_inputs[words], state.h, state.c, p)
        return self._scores(h, p, normalized), state._replace(h=h, c=c)

    def select_state(self, state, rows):
        """Reorder/replicate the batch rows of a decoder state: rows (M,) int -> state for M
        rows."""
        return state._replace(h=state.h[rows], c=state.c[rows])
