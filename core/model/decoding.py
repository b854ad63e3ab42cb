"""Greedy, sampled and beam-search decoding, shared by all decoders.

Shape letters: N images, K beam size, V vocabulary, L max_length, R regions.

A decoder meets the `Decoder` protocol below (an attending one `AttendingDecoder`): a named state
(a NamedTuple: the RNNs' RNNState (h, c), the region decoders' AttentionState and UpDownState, the
transformer's TransformerState with its key/value cache, so each step costs one position), stepped
inside `with model.decoding():` (eval mode and no autograd for a torch model).
"""
from typing import ContextManager, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Decoder(Protocol):
    """The step interface every decoder meets (core/model/registry.py's rows are tested on it)."""

    start_idx: int
    end_idx: int
    null_idx: int

    def decoding(self) -> ContextManager:
        """The context decoding runs in."""

    def init_state(self, features):
        """features (N, D) or Regions (N, R, D) -> the state before the first word."""

    def step(self, words, state, normalized=True):
        """words (B,) int, state -> log-probabilities (B, V) numpy (with normalized False the raw
        scores, whose argmax is the same: all greedy decoding needs), the next state."""

    def select_state(self, state, rows):
        """rows (B',) int -> the state of those rows (kept, reordered or replicated)."""


@runtime_checkable
class AttendingDecoder(Decoder, Protocol):
    """A decoder over R regions, which also says where it looked."""

    def attention(self, state):
        """-> (B, R) numpy: the attention the last step's word was chosen with."""


def require_start_end(model):
    """ValueError when the model's vocabulary lacks <START> or <END>, which decoding needs."""
    if model.start_idx is None or model.end_idx is None:
        raise ValueError("decoding needs <START> and <END> in the vocabulary; this model's has "
                         + " and ".join(t for t, i in (("no <START>", model.start_idx),
                                                       ("no <END>", model.end_idx))
                                        if i is None))


def decode(model, features, max_length=30, beam_size=1, length_penalty=0.0, **options):
    """features (N, D) -> captions (N, L) int64: the words after <START>, with <END> where
    produced and <NULL> after it. beam_size 1 is greedy decoding (but for beam_search's options:
    block_trigrams, bad_endings, group_size, diversity_lambda, which beam_search applies)."""
    require_start_end(model)
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    plain = (not options.get("block_trigrams") and not len(options.get("bad_endings", ()))
             and options.get("group_size", 1) == 1)
    if beam_size == 1 and plain:
        return greedy_search(model, features, max_length)
    return beam_search(model, features, max_length, beam_size, length_penalty, **options)[0]


def greedy_search(model, features, max_length=30, attention=False):
    """Pick the most likely word at every step (the argmax of the raw scores: no softmax is needed).
    features (N, ...) -> (N, L) int64; with attention (a decoder that attends over R regions) also
    the attention (N, L, R) each word was chosen with (`model.attention(state)` after its step)."""
    N = len(features)
    captions = np.full((N, max_length), model.null_idx, dtype=np.int64)
    words = np.full(N, model.start_idx, dtype=np.int64)
    done = np.zeros(N, dtype=bool)
    maps = []
    with model.decoding():
        state = model.init_state(features)
        for t in range(max_length):
            scores, state = model.step(words, state, normalized=False)
            if attention:
                maps.append(model.attention(state))
            words = scores.argmax(axis=1)
            captions[~done, t] = words[~done]
            done |= words == model.end_idx
            if done.all():
                break
    if not attention:
        return captions
    alphas = np.zeros((N, max_length, maps[0].shape[1]), dtype=np.float32)
    alphas[:, :len(maps)] = np.stack(maps, axis=1)
    return captions, alphas


def sample_search(model, features, max_length=30, num_samples=1, temperature=1.0, rng=None,
                  draws=None):
    """Draw num_samples captions per image, each word from softmax(log-probabilities / temperature)
    (temperature 0: the most likely word, i.e. greedy decoding), all images and samples as one
    batch.

    features (N, D) -> captions (N * num_samples, L) int64, image k's samples in rows
    k * num_samples ... (k + 1) * num_samples - 1; rng: a numpy Generator (seeded for reproducible
    draws); draws: (N * num_samples, L) uniforms in [0, 1) to use instead, row r's word t drawn by
    draws[r, t].
    """
    require_start_end(model)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    rng = np.random.default_rng() if rng is None else rng
    B = len(features) * num_samples
    if draws is not None and draws.shape != (B, max_length):
        raise ValueError(f"draws has shape {draws.shape}, expected {(B, max_length)}")
    captions = np.full((B, max_length), model.null_idx, dtype=np.int64)
    words = np.full(B, model.start_idx, dtype=np.int64)
    done = np.zeros(B, dtype=bool)
    with model.decoding():
        state = model.select_state(model.init_state(features),
                                   np.repeat(np.arange(len(features)), num_samples))
        for t in range(max_length):
            logprobs, state = model.step(words, state)
            if temperature == 0:
                words = logprobs.argmax(axis=1)
            else:
                words = draw_words(logprobs, rng.random(B) if draws is None else draws[:, t],
                                   temperature)
            captions[~done, t] = words[~done]
            done |= words == model.end_idx
            if done.all():
                break
    return captions


def draw_words(logprobs, uniform, temperature=1.0):
    """One word per row from softmax(logprobs / temperature), by the inverse CDF of one uniform
    draw per row: logprobs (B, V), uniform (B,) in [0, 1) -> words (B,) int."""
    scaled = logprobs.astype(np.float64) / temperature  # (B, V)
    cumulative = np.cumsum(np.exp(scaled - scaled.max(axis=1, keepdims=True)), axis=1)
    target = uniform * cumulative[:, -1]
    return np.minimum((cumulative < target[:, None]).sum(axis=1), logprobs.shape[1] - 1)


BAD_ENDINGS = ("a", "an", "the", "of", "in", "on", "at", "to", "for", "with", "this", "that", "his",
               "her")  # self-critical.pytorch's --remove_bad_endings: a caption may not end on them


def beam_search(model, features, max_length=30, beam_size=3, length_penalty=0.0,
                attention=False, block_trigrams=False, bad_endings=(), group_size=1,
                diversity_lambda=0.0):
    """Batched beam search over all images at once, with self-critical.pytorch's options.

    Keeps the beam_size best partial captions per image by summed log-probability; a beam
    that emits <END> is finished and carried along unchanged. Beams are ranked by
    score / length ** length_penalty (0: plain sum of log-probabilities).
    block_trigrams: a word that would repeat a trigram of its beam's caption is never chosen;
    bad_endings: word indices after which <END> is never chosen (a caption cannot end on "a");
    group_size G (diverse beam search, Vijayakumar et al. 2016): the beams are G groups of
    beam_size / G, each group chosen in turn at every step with its candidates' ranks lowered by
    diversity_lambda times the times an earlier group chose the same word at that step (the
    scores kept are the plain log-probabilities).
    features (N, D) -> captions (N, L) int64, scores (N,) the summed log-probability of
    each returned caption; with attention (a decoder over R regions) also the attention
    (N, L, R) each word of the returned caption was chosen with (its beam's, step by step).
    """
    N, K = len(features), beam_size
    if group_size < 1 or K % group_size:
        raise ValueError(f"beam_size {K} must be a multiple of group_size {group_size}")
    B = K // group_size  # beams of a group
    seqs = np.full((N, K, max_length), model.null_idx, dtype=np.int64)
    scores = np.full((N, K), -np.inf)
    scores[:, ::B] = 0.0  # all beams start identical: expand only each group's first
    lengths = np.zeros((N, K), dtype=np.int64)
    done = np.zeros((N, K), dtype=bool)
    words = np.full(N * K, model.start_idx, dtype=np.int64)
    bad_endings = np.asarray(bad_endings, dtype=np.int64)
    maps = None
    with model.decoding():
        state = model.select_state(model.init_state(features), np.repeat(np.arange(N), K))
        for t in range(max_length):
            logprobs, state = model.step(words, state)
            if attention:
                alpha = model.attention(state).reshape(N, K, -1)  # (N, K, R): before the choice
                if maps is None:
                    maps = np.zeros((N, K, max_length, alpha.shape[2]), dtype=np.float32)
            logprobs = logprobs.reshape(N, K, -1).astype(np.float64)
            if t and len(bad_endings):  # no <END> right after a bad ending
                logprobs[np.isin(seqs[:, :, t - 1], bad_endings) & ~done, model.end_idx] = -np.inf
            if block_trigrams:
                _block_trigrams(logprobs, seqs, t)
            logprobs[done] = -np.inf  # a finished beam extends only with <NULL>, at no cost
            logprobs[done, model.null_idx] = 0.0
            total = scores[:, :, None] + logprobs  # (N, K, V)
            new_len = (lengths + ~done)[:, :, None]  # (N, K, 1)
            rank = total / new_len ** length_penalty if length_penalty else total
            beam, word = _choose(rank, B, diversity_lambda)  # (N, K) each
            rows = np.arange(N)[:, None]
            seqs = seqs[rows, beam]
            seqs[:, :, t] = word
            if attention:  # each kept beam's history, and the attention its parent chose with
                maps = maps[rows, beam]
                maps[:, :, t] = alpha[rows, beam]
            scores = total[rows, beam, word]
            lengths = new_len[rows, beam, 0]
            done = done[rows, beam] | (word == model.end_idx)
            state = model.select_state(state, (rows * K + beam).reshape(-1))
            words = word.reshape(-1)
            if done.all():
                break
    final = scores / np.maximum(lengths, 1) ** length_penalty if length_penalty else scores
    best = np.argmax(final, axis=1)
    picked = seqs[np.arange(N), best]
    captions = _pad_after_end(picked, model.end_idx, model.null_idx)
    if attention:
        return captions, scores[np.arange(N), best], maps[np.arange(N), best]
    return captions, scores[np.arange(N), best]


def _block_trigrams(logprobs, seqs, t):
    """logprobs (N, K, V) of step t, in place: -inf for each word that, after a beam's words t-2
    and t-1 (seqs (N, K, L)), would make a trigram its caption already holds."""
    for i in range(t - 2):  # the trigram at i, i+1, i+2 ends where t's would start again
        same = (seqs[:, :, i] == seqs[:, :, t - 2]) & (seqs[:, :, i + 1] == seqs[:, :, t - 1])
        n, k = np.nonzero(same)
        logprobs[n, k, seqs[n, k, i + 2]] = -np.inf


def _choose(rank, B, diversity_lambda):
    """rank (N, K, V) of every beam's continuations -> (beam (N, K), word (N, K)): the B best of
    each group of B beams, groups in turn, a group's ranks lowered by diversity_lambda per earlier
    group's choice of the same word (Hamming diversity)."""
    N, K, V = rank.shape
    chosen = np.zeros((N, V))  # times each word was chosen at this step by earlier groups
    beams, words = [], []
    for start in range(0, K, B):
        group = rank[:, start:start + B] - diversity_lambda * chosen[:, None, :]  # (N, B, V)
        top = np.argsort(-group.reshape(N, B * V), axis=1, kind="stable")[:, :B]  # (N, B)
        beam, word = start + top // V, top % V
        np.add.at(chosen, (np.arange(N)[:, None], word), 1)
        beams.append(beam)
        words.append(word)
    return np.concatenate(beams, axis=1), np.concatenate(words, axis=1)


def _pad_after_end(captions, end, null):
    """Replace everything after the first <END> with <NULL>. captions (N, L) -> (N, L)."""
    ended = np.cumsum(captions == end, axis=1) > 0
    after = np.zeros_like(ended)
    after[:, 1:] = ended[:, :-1]
    return np.where(after, null, captions)


def sequence_logprob(model, features, captions):
    """Summed log-probability of given captions (up to and including <END>).

    features (N, D), captions (N, L) as returned by decode -> (N,) float64.
    """
    require_start_end(model)
    N, L = captions.shape
    total = np.zeros(N)
    done = np.zeros(N, dtype=bool)
    words = np.full(N, model.start_idx, dtype=np.int64)
    with model.decoding():
        state = model.init_state(features)
        for t in range(L):
            logprobs, state = model.step(words, state)
            words = captions[:, t]
            total[~done] += logprobs[np.arange(N), words][~done]
            done |= words == model.end_idx
    return total
