"""CaptioningTransformer: a Transformer caption decoder built from the hand-written layers.

Shape letters: N batch, T caption length, D image feature, E word vector (model width),
V vocabulary.

The image feature is projected to one memory token that every decoder layer
cross-attends to; the caption attends to itself through a causal mask.
"""
import contextlib
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.data.vocab import index_vocabulary
from core.model.decoding import decode, require_start_end
from core.layers.transformer_layers import PositionalEncoding, TransformerDecoder


class TransformerState(NamedTuple):
    """A transformer's decoding state: t the next position; layers: each decoder layer's
    key/value cache (core/layers/transformer_layers.py); attention (N, S) the last step's
    cross-attention of the last layer, averaged over heads (None before the first step)."""

    t: int
    layers: list
    attention: object = None


class CaptioningTransformer(nn.Module):
    """word_to_idx: dict word -> index (V entries); input_dim D; wordvec_dim E (even,
    divisible by num_heads); max_length: the longest sequence the position code covers;
    seed: initialise from this seed (None: from the global torch RNG).

    one_memory_token: its memory is one token per image, so the cross-attention weights are
    softmax over one key, always 1, and the query and key projections of the cross-attention never
    reach the output: they are kept (the original repository's files hold them) but not trained. A
    decoder over several memory tokens (core/model/region_transformer.py) declares False.
    """

    one_memory_token = True

    def __init__(self, word_to_idx, input_dim, wordvec_dim, num_heads=4, num_layers=2,
                 max_length=50, dim_feedforward=2048, dropout=0.1, seed=None):
        super().__init__()
        # a seed leaves the global RNG alone
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self._build(word_to_idx, input_dim, wordvec_dim, num_heads, num_layers, max_length,
                        dim_feedforward, dropout)

    def _build(self, word_to_idx, input_dim, wordvec_dim, num_heads, num_layers, max_length,
               dim_feedforward, dropout):
        """Create and initialise the layers (weights N(0, 0.02), biases 0, LayerNorm 1/0)."""
        self.word_to_idx = dict(word_to_idx)
        vocabulary = index_vocabulary(word_to_idx)
        self.idx_to_word, self.null_idx, self.start_idx, self.end_idx = vocabulary
        self.input_dim, self.wordvec_dim = input_dim, wordvec_dim
        self.num_heads, self.num_layers, self.max_length = num_heads, num_layers, max_length
        self.dim_feedforward, self.dropout = dim_feedforward, dropout
        V = len(word_to_idx)

        self.visual_projection = nn.Linear(input_dim, wordvec_dim)
        self.embedding = nn.Embedding(V, wordvec_dim, padding_idx=self.null_idx)
        self.positional_encoding = PositionalEncoding(wordvec_dim, dropout=dropout,
                                                      max_len=max_length)
        self.transformer = TransformerDecoder(wordvec_dim, num_heads, num_layers, dim_feedforward,
                                              dropout)
        self.output = nn.Linear(wordvec_dim, V)
        self.apply(self._init_weights)
        for layer in self.transformer.layers:
            layer.multihead_attn.query.requires_grad_(not self.one_memory_token)
            layer.multihead_attn.key.requires_grad_(not self.one_memory_token)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    model_type = "transformer"

    def config(self):
        """Plain dict that rebuilds this model with `from_config` (weights not included)."""
        return {
            "model": "transformer",
            "input_dim": self.input_dim,
            "wordvec_dim": self.wordvec_dim,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "max_length": self.max_length,
            "dim_feedforward": self.dim_feedforward,
            "dropout": self.dropout,
            "idx_to_word": list(self.idx_to_word),
        }

    @classmethod
    def from_config(cls, config, seed=None):
        """Build an untrained model from a `config()` dict."""
        word_to_idx = {w: i for i, w in enumerate(config["idx_to_word"]) if w is not None}
        keys = ("input_dim", "wordvec_dim", "num_heads", "num_layers", "max_length",
                "dim_feedforward", "dropout")
        return cls(word_to_idx, seed=seed, **{k: config[k] for k in keys})

    @staticmethod
    def count_parameters(config):
        """Number of trained weights of the model a `config()` dict describes, without building
        it."""
        V = sum(w is not None for w in config["idx_to_word"])
        D, E = config["input_dim"], config["wordvec_dim"]
        F, L = config["dim_feedforward"], config["num_layers"]
        # self-attention q, k, v, out; cross-attention v, out; feed-forward; three norms
        layer = 6 * (E * E + E) + (E * F + F) + (F * E + E) + 6 * E
        return (D * E + E) + V * E + L * layer + (E * V + V)

    def state_arrays(self):
        """The weights (and the position code) by name, as CPU tensors: name -> tensor."""
        return {k: v.detach().cpu() for k, v in self.state_dict().items()}

    def load_state_arrays(self, arrays):
        """Set the weights from name -> tensor (as `state_arrays` gives them); ValueError for a
        missing, extra, wrongly shaped or non-float tensor."""
        own = self.state_dict()
        if set(arrays) != set(own):
            missing, extra = sorted(set(own) - set(arrays)), sorted(set(arrays) - set(own))
            raise ValueError(f"tensors do not match the model's (missing {missing[:3]}, unexpected "
                             f"{extra[:3]})")
        for name, value in arrays.items():
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"parameter {name} has dtype {kind}, not a floating-point type")
            if value.shape != own[name].shape:
                raise ValueError(f"parameter {name} has shape {tuple(value.shape)}, expected "
                                 f"{tuple(own[name].shape)}")
        self.load_state_dict(arrays)

    @property
    def device(self):
        """The device the parameters live on."""
        return self.output.weight.device

    def inputs(self, features):
        """Image features (N, D) as an array or tensor -> a float32 tensor on the model's device."""
        return torch.as_tensor(features, dtype=torch.float32, device=self.device)

    def memory(self, features):
        """What the decoder cross-attends to: features (N, D) -> one token (N, 1, E)."""
        return self.visual_projection(features)[:, None, :]

    def memory_mask(self, features):
        """Which memory tokens a row may attend to: (N, 1, 1, S) bool, or None (all: here one)."""
        return None

    def forward(self, features, captions):
        """features (N, D) float (a subclass's memory may read other shapes), captions (N, T) long
        -> scores (N, T, V)."""
        T = captions.shape[1]
        features = self.inputs(features)
        memory = self.memory(features)  # (N, S, E)
        x = self.positional_encoding(self.embedding(captions))  # (N, T, E)
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool, device=captions.device))  # (T, T)
        return self.output(self.transformer(x, memory, tgt_mask=mask,
                                            memory_mask=self.memory_mask(features)))  # (N, T, V)

    def loss(self, features, captions, weights=None, smoothing=0.0):
        """Teacher-forced loss, as the numpy models define it: cross-entropy summed over
        the non-<NULL> target words (each caption's times its weight, if given), averaged over the
        batch; smoothing: label smoothing of the targets.

        features (N, D), captions (N, T + 1), weights (N,) or None -> scalar tensor.
        """
        return self.loss_from_scores(self(features, captions[:, :-1]), captions, weights, smoothing)

    def loss_from_scores(self, scores, captions, weights=None, smoothing=0.0):
        """The loss of `loss` from forward's scores (N, T, V) of captions (N, T + 1) -> scalar
        tensor (so that a wrapper of forward, such as DistributedDataParallel, can compute the
        scores)."""
        N, T = captions.shape[0], captions.shape[1] - 1
        flat_scores, targets = scores.reshape(-1, scores.shape[-1]), captions[:, 1:].reshape(-1)
        if weights is None:
            total = F.cross_entropy(flat_scores, targets, ignore_index=self.null_idx,
                                    reduction="sum", label_smoothing=smoothing)
            return total / N
        per_word = F.cross_entropy(flat_scores, targets, ignore_index=self.null_idx,
                                   reduction="none", label_smoothing=smoothing).view(N, T)  # (N, T)
        return (per_word.sum(dim=1) * torch.as_tensor(weights, dtype=per_word.dtype,
                                                      device=per_word.device)).sum() / N

    @contextlib.contextmanager
    def decoding(self):
        """Context for decoding: eval mode (no dropout) and no autograd, the mode restored after."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.train(was_training)

    def init_state(self, features):
        """Decoding state before the first word: features (N, D) -> key/value caches and position
        0."""
        features = self.inputs(features)
        memory = self.memory(features)  # (N, S, E): its keys and values projected once per caption
        mask = self.memory_mask(features)
        return TransformerState(0, [layer.init_cache(memory, self.max_length, mask)
                                    for layer in self.transformer.layers])

    def step(self, words, state, normalized=True):
        """One decoding step with the key/value cache (eval mode, no grad).

        words (N,) int -> log-probabilities (N, V) float32 numpy (with normalized False the raw
        scores, whose argmax is the same), new state.
        """
        t = state.t
        if t >= self.max_length:
            raise ValueError(f"cannot decode past max_length={self.max_length} positions")
        words = torch.as_tensor(np.asarray(words), dtype=torch.long, device=self.device)
        x = self.positional_encoding(self.embedding(words)[:, None, :], offset=t)  # (N, 1, E)
        weights = []
        for k, (layer, cache) in enumerate(zip(self.transformer.layers, state.layers)):
            x = layer.step(x, cache, t, weights_out=weights if k == self.num_layers - 1 else None)
        scores = self.output(x[:, 0]).float()  # (N, V)
        # (N, S): the last layer's, mean over heads
        state = TransformerState(t + 1, state.layers, weights[0][:, :, 0].mean(dim=1))
        return (F.log_softmax(scores, dim=-1) if normalized else scores).cpu().numpy(), state

    def select_state(self, state, rows):
        """Keep/replicate batch rows of a decoding state: rows (M,) int -> state for M rows."""
        index = torch.as_tensor(np.asarray(rows), dtype=torch.long, device=self.device)
        t = state.t
        layers = []
        for cache in state.layers:
            new = {k: cache[k].index_select(0, index) for k in ("mem_k", "mem_v", "mem_mask")
                   if k in cache}
            # only the t filled positions of the self-attention cache are copied
            for k in ("k", "v"):
                buffer = cache[k].new_empty((len(index),) + cache[k].shape[1:])
                buffer[:, :, :t] = cache[k][index, :, :t]
                new[k] = buffer
            layers.append(new)
        return TransformerState(t, layers, None if state.attention is None
                                else state.attention.index_select(0, index))

    @staticmethod
    def attention(state):
        """The last step's cross-attention of the last layer, averaged over heads: (N, S) numpy."""
        return state.attention.float().cpu().numpy()

    def sample(self, features, max_length=30, beam_size=1, length_penalty=0.0, **options):
        """Decode captions with the key/value cache (greedy with beam_size 1, else beam search).

        features (N, D) array or tensor -> captions (N, max_length) int64 numpy array:
        the words after <START>, with <END> where produced and <NULL> after it.
        """
        self._check_length(max_length)
        return decode(self, features, max_length, beam_size, length_penalty, **options)

    def _check_length(self, max_length):
        """The decoder reads <START> and at most max_length - 1 words to produce max_length
        words."""
        if max_length > self.max_length:
            raise ValueError(f"max_length={max_length} needs a model built with max_length >= "
                             f"{max_length}")

    @torch.no_grad()
    def sample_uncached(self, features, max_length=30):
        """Greedy decoding that re-runs the decoder on the whole prefix at every step: the
        reference the cached path is tested against. Same inputs and outputs as `sample`."""
        self._check_length(max_length)
        require_start_end(self)
        was_training = self.training
        self.eval()
        features = self.inputs(features)
        N = len(features)
        tokens = torch.full((N, 1), self.start_idx, dtype=torch.long, device=self.device)
        done = torch.zeros(N, dtype=torch.bool, device=self.device)
        captions = torch.full((N, max_length), self.null_idx, dtype=torch.long, device=self.device)
        for t in range(max_length):
            words = self(features, tokens)[:, -1].argmax(dim=-1)  # (N,)
            captions[:, t] = torch.where(done, captions[:, t], words)
            done |= words == self.end_idx
            if bool(done.all()):
                break
            tokens = torch.cat([tokens, words[:, None]], dim=1)
        self.train(was_training)
        return captions.cpu().numpy()
