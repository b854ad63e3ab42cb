import contextlib
import itertools

import numpy as np
import pytest
import torch

from core.model.decoding import beam_search, decode, greedy_search, sequence_logprob
from core.model.rnn_model import CaptioningRNN
from core.model.transformer import CaptioningTransformer
from core.model.registry import MODEL_TYPES
from core.data.feature_kinds import FEATURE_KINDS
from tests.helpers import DECODER_IDS, DECODERS, box_rows, tiny_model

WORDS = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "cat", "dog", "sits", "runs", "on", "mat"]
VOCAB = {w: i for i, w in enumerate(WORDS)}


def _rnn(cell_type, vocab=VOCAB, seed=0):
    model = CaptioningRNN(vocab, input_dim=6, wordvec_dim=8, hidden_dim=10, cell_type=cell_type, seed=seed)
    for k in model.params:  # sharpen the untrained distributions so that decoding choices matter
        model.params[k] *= 3
    return model


def _transformer(vocab=VOCAB, seed=0):
    torch.manual_seed(seed)
    model = CaptioningTransformer(vocab, input_dim=6, wordvec_dim=16, num_heads=2, num_layers=2,
                                  dim_feedforward=32, max_length=40)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(20)
    return model


class RegionView:
    """A decoder over regions seen through the (N, 6) features of these tests: `to_regions` makes each
    row a few regions."""

    def __init__(self, model, to_regions):
        self.model, self.to_regions = model, to_regions

    def __getattr__(self, name):
        return getattr(self.model, name)

    def init_state(self, features):
        return self.model.init_state(self.to_regions(features))

    def loss(self, features, captions, weights=None):
        return self.model.loss(self.to_regions(np.asarray(features)), captions, weights)

    def sample(self, features, **kw):
        return decode(self, features, **kw)


def _four_regions(features):
    """(N, 6) -> (N, 4, 6): the row scaled four ways."""
    f = torch.as_tensor(features)
    return torch.stack([f, -f, 0.5 * f, 2 * f], dim=1)


def _four_boxes(features):
    """(N, 6) -> Regions (N, 4, 6) with geometry: the four regions as boxes, a row's boxes past 1 + (the place of its
    largest feature) % 4 padding (a count that the row's content decides, as an image's does)."""
    features = np.asarray(features)
    return box_rows(_four_regions(features).numpy(), 1 + np.argmax(features, axis=1) % 4)


def _from_registry(name, features=None, vocab=VOCAB, seed=0):
    """A tiny model of registry row `name` over (N, 6) features (seen as four regions, or four
    boxes some of them padding, by a decoder that reads regions), its weights sharpened so that
    decoding choices matter."""
    kind = MODEL_TYPES[name]
    features = features or kind.features
    regions = FEATURE_KINDS[features].regions
    idx_to_word = [w for w, _ in sorted(vocab.items(), key=lambda item: item[1])]
    shape = (1, 6) if not regions else (1, 4, 6)
    counted = FEATURE_KINDS[features].counted  # boxes: any number per image, masked
    train = box_rows(np.zeros(shape, np.float32)) if counted else np.zeros(shape, np.float32)
    data = {"train_features": train, "idx_to_word": idx_to_word,
            "train_captions": np.zeros((1, 7), np.int32), "features_kind": features}
    torch.manual_seed(seed)
    model = tiny_model(name, data, seed=seed, wordvec_dim=16, hidden_dim=10, dim_feedforward=32, num_layers=2,
                       alpha_c=0.0)
    if kind.uses_torch:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(20)
    else:
        for k in model.params:
            model.params[k] *= 3
    if not regions:
        return model
    if counted:
        to_regions = _four_boxes
    else:
        to_regions = _four_regions if kind.uses_torch else lambda f: _four_regions(f).numpy()
    return RegionView(model, to_regions)


MODELS = {label: (lambda name=name, kind=kind, **kw: _from_registry(name, kind, **kw))
          for (name, kind), label in zip(DECODERS, DECODER_IDS)}
FEATURES = np.random.default_rng(0).standard_normal((7, 6)).astype(np.float32)


@pytest.mark.parametrize("name", MODELS)
def test_beam_of_one_is_greedy(name):
    model = MODELS[name]()
    greedy = greedy_search(model, FEATURES, max_length=12)
    np.testing.assert_array_equal(beam_search(model, FEATURES, max_length=12, beam_size=1)[0], greedy)
    np.testing.assert_array_equal(model.sample(FEATURES, max_length=12), greedy)


@pytest.mark.parametrize("name", MODELS)
def test_step_by_step_log_probabilities_match_the_teacher_forced_loss(name):
    """The decoding path (init_state/step, e.g. the RNNs' per-word input table) computes the
    same distributions as the training path."""
    model = MODELS[name]()
    torch_model = MODEL_TYPES[name.split("-")[0]].uses_torch
    if not torch_model:
        for k in ("b", "b_proj", "b_vocab", "bh", "b_att", "b_beta", "w_beta", "b_init_h", "b_init_c"):  # zero at init
            if k in model.params:
                model.params[k] += np.random.default_rng(1).standard_normal(model.params[k].shape).astype(np.float32)
    captions = np.array([[1, 4, 5, 7, 2, 0, 0], [1, 6, 8, 9, 4, 10, 2]])  # <START> ... <END> <NULL>...
    logprob = sequence_logprob(model, FEATURES[:2], captions[:, 1:])
    if torch_model:
        model.eval()
        with torch.no_grad():
            loss = float(model.loss(torch.from_numpy(FEATURES[:2]), torch.from_numpy(captions)))
    else:
        loss, _ = model.loss(FEATURES[:2], captions)
    np.testing.assert_allclose(-logprob.sum() / 2, loss, rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_beam_scores_at_least_greedy_and_reports_true_scores(name):
    model = MODELS[name]()
    greedy = greedy_search(model, FEATURES, max_length=12)
    beams, scores = beam_search(model, FEATURES, max_length=12, beam_size=4)
    np.testing.assert_allclose(scores, sequence_logprob(model, FEATURES, beams), rtol=1e-5, atol=1e-5)
    assert (scores >= sequence_logprob(model, FEATURES, greedy) - 1e-5).all()  # float32 rounding of ~10
    for row in beams:  # <NULL> only after <END>
        ends = np.flatnonzero(row == VOCAB["<END>"])
        if len(ends):
            assert (row[ends[0] + 1:] == VOCAB["<NULL>"]).all()


@pytest.mark.parametrize("name", MODELS)
def test_wide_beam_finds_the_exhaustive_optimum(name):
    vocab = {w: i for i, w in enumerate(["<NULL>", "<START>", "<END>", "cat", "dog"])}
    model = MODELS[name](vocab=vocab, seed=3)
    V, L = len(vocab), 4
    features = FEATURES[:3]
    candidates = np.array(list(itertools.product(range(V), repeat=L)))  # every sequence of L tokens
    for n in range(len(features)):
        feats = np.repeat(features[n:n + 1], len(candidates), axis=0)
        best = sequence_logprob(model, feats, candidates).max()
        _, score = beam_search(model, features[n:n + 1], max_length=L, beam_size=V ** (L - 1))
        assert score[0] == pytest.approx(best, abs=1e-5)


class MarkovChain:
    """A decoder whose next-word log-probabilities depend only on the previous word (a fixed random
    table), with the step interface of core/model/decoding.py; <NULL> is never likely."""

    null_idx, start_idx, end_idx = 0, 1, 2

    def __init__(self, seed, V=6, end_bias=0.0):
        rng = np.random.default_rng(seed)
        scores = rng.standard_normal((V, V)) * 1.5
        scores[:, 0] = -30.0
        scores[:, 2] += end_bias
        self.table = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))

    def decoding(self):
        return contextlib.nullcontext()

    def init_state(self, features):
        return None

    def step(self, words, state, normalized=True):
        return self.table[words], state

    def select_state(self, state, rows):
        return state


def reference_beam_search(model, K, L, penalty):
    """Plain one-image beam search: keep the K best by score / length ** penalty at every step,
    finished beams carried along unchanged; return the best finished-or-not caption by the same rank."""
    def rank(beam):
        return beam[1] / beam[2] ** penalty if penalty else beam[1]

    beams = [((), 0.0, 0, False)]  # words, summed log-probability, length (words up to <END>), finished
    for _ in range(L):
        candidates = []
        for words, score, length, done in beams:
            if done:
                candidates.append((words + (model.null_idx,), score, length, True))
                continue
            last = words[-1] if words else model.start_idx
            for w, lp in enumerate(model.table[last]):
                candidates.append((words + (w,), score + lp, length + 1, w == model.end_idx))
        beams = sorted(candidates, key=rank, reverse=True)[:K]
        if all(b[3] for b in beams):
            break
    best = max(beams, key=rank)
    return list(best[0]) + [model.null_idx] * (L - len(best[0])), best[1]


@pytest.mark.parametrize("penalty", [0.0, 0.7, 1.5])
def test_beam_search_ranks_and_picks_by_the_length_penalty(penalty):
    """Against a plain reference on many random chains: a beam search that ignored the penalty while
    ranking, or in its final pick, returns other captions."""
    differs_from_plain = 0
    for seed in range(40):
        model = MarkovChain(seed, end_bias=-0.5)
        expected, expected_score = reference_beam_search(model, K=3, L=7, penalty=penalty)
        captions, scores = beam_search(model, np.zeros((1, 1)), max_length=7, beam_size=3, length_penalty=penalty)
        assert captions[0].tolist() == expected, seed
        assert scores[0] == pytest.approx(expected_score)
        differs_from_plain += captions[0].tolist() != reference_beam_search(model, K=3, L=7, penalty=0.0)[0]
    assert (differs_from_plain > 0) == (penalty > 0)  # the penalty changes results on these chains


def test_beam_size_must_be_positive():
    with pytest.raises(ValueError, match="beam_size"):
        decode(_rnn("lstm"), FEATURES, beam_size=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transformer_cache_gives_exactly_the_uncached_tokens(seed):
    """Both transformers: over one memory token and over regions (whose memory keys and values the
    cache projects once per caption)."""
    model = _transformer(seed=seed)
    features = np.random.default_rng(seed).standard_normal((16, 6)).astype(np.float32)
    cached = model.sample(features, max_length=30)
    np.testing.assert_array_equal(cached, model.sample_uncached(features, max_length=30))
    for kind, to_regions in (("grid", _four_regions), ("boxes", _four_boxes)):
        regions = MODELS[f"region_transformer-{kind}"](seed=seed)
        cached_regions = regions.sample(features, max_length=30)
        np.testing.assert_array_equal(cached_regions, regions.model.sample_uncached(to_regions(features), max_length=30))
        assert (cached_regions != VOCAB["<NULL>"]).sum() > 16
    assert (cached != VOCAB["<NULL>"]).sum() > 16  # non-trivial captions were compared


@pytest.mark.parametrize("name", MODELS)
def test_the_raw_step_scores_greedy_decoding_reads_are_the_log_probabilities_unnormalized(name):
    """Greedy decoding takes the argmax of the raw scores (no log-softmax per step, the cost the
    original repository's decoding never paid); they differ from the log-probabilities by one
    constant per row, so every argmax, and every greedy caption, is the same."""
    from scipy.special import log_softmax

    model = MODELS[name]()
    with model.decoding():
        start = np.full(len(FEATURES), model.start_idx)
        logprobs, _ = model.step(start, model.init_state(FEATURES))
        scores, _ = model.step(start, model.init_state(FEATURES), normalized=False)
    assert not np.allclose(scores, logprobs)
    np.testing.assert_allclose(log_softmax(scores.astype(np.float64), axis=1), logprobs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [label for (_, kind), label in zip(DECODERS, DECODER_IDS)
                                  if kind != "fc7"])
def test_beam_search_returns_the_attention_its_chosen_caption_was_written_with(name):
    """Breaks caught: the attention of another beam (not reordered with the beams), or the one after
    the word's choice instead of the one it was chosen with; beam 1 equals greedy's maps."""
    model = MODELS[name]()
    captions, _, alphas = beam_search(model, FEATURES, max_length=8, beam_size=3, attention=True)
    with model.decoding():  # the chosen captions fed back word by word: the maps they were chosen with
        state = model.init_state(FEATURES)
        words = np.full(len(FEATURES), model.start_idx)
        for t in range(8):
            _, state = model.step(words, state)
            alive = (captions[:, :t] != model.end_idx).all(axis=1) & (captions[:, t] != model.null_idx)
            np.testing.assert_allclose(alphas[alive, t], model.attention(state)[alive], rtol=1e-5, atol=1e-6)
            words = captions[:, t]
    greedy_words, greedy_maps = greedy_search(model, FEATURES, max_length=8, attention=True)
    beam_words, _, beam_maps = beam_search(model, FEATURES, max_length=8, beam_size=1, attention=True)
    np.testing.assert_array_equal(beam_words, greedy_words)
    ended = np.cumsum(greedy_words == model.end_idx, axis=1) - (greedy_words == model.end_idx) == 0
    np.testing.assert_allclose(beam_maps[ended], greedy_maps[ended], rtol=1e-5, atol=1e-6)


def _exhaustive(model, L, allowed):
    """The best caption of at most L tokens under `allowed` (a predicate of its words up to and with
    <END>), by summed log-probability, and its score: every sequence tried."""
    V = model.table.shape[0]
    best, best_score = None, -np.inf
    for length in range(1, L + 1):
        for words in itertools.product(range(1, V), repeat=length):  # never <NULL>
            if model.end_idx in words[:-1] or (length < L and words[-1] != model.end_idx):
                continue  # <END> only last; a caption shorter than L ends with it
            if not allowed(words):
                continue
            score, last = 0.0, model.start_idx
            for w in words:
                score, last = score + model.table[last, w], w
            if score > best_score:
                best, best_score = list(words) + [model.null_idx] * (L - length), score
    return best, best_score


def _repeats_a_trigram(words):
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return len(set(trigrams)) < len(trigrams)


@pytest.mark.parametrize("seed", range(6))
def test_blocked_trigrams_and_bad_endings_give_the_constrained_optimum(seed):
    """A beam wide enough to keep every prefix finds, under --block_trigrams (no trigram twice) and
    --remove_bad_endings (no <END> right after a bad word), the best caption that meets them, found
    by trying every one. Breaks caught: a trigram's words compared at the wrong offsets, the block
    or the bad ending not applied, or applied to finished beams."""
    model = MarkovChain(seed, V=5, end_bias=-1.0)
    model.table[3, 3] = model.table[3, 4] = model.table[4, 3] = 0.0  # loops are likely
    L, wide = 7, 4 ** 6
    for options, allowed in (({"block_trigrams": True}, lambda w: not _repeats_a_trigram(w)),
                             ({"bad_endings": (3,)}, lambda w: not (len(w) > 1 and w[-1] == 2 and w[-2] == 3))):
        expected, score = _exhaustive(model, L, allowed)
        captions, scores = beam_search(model, np.zeros((1, 1)), max_length=L, beam_size=wide, **options)
        assert scores[0] == pytest.approx(score) and captions[0].tolist() == expected, options
    plain = beam_search(model, np.zeros((1, 1)), max_length=L, beam_size=wide)[0][0].tolist()
    assert _repeats_a_trigram([w for w in plain if w]) or seed  # the loops the block removes


def test_greedy_decoding_takes_the_options_too():
    """decode with beam 1 and --block_trigrams is a beam of one under the block (break caught: the
    options dropped for greedy decoding, which then loops)."""
    model = MarkovChain(0, V=5, end_bias=-30.0)
    model.table[1] = -30.0
    model.table[1, 3] = 0.0  # <START> -> 3 -> 4 -> 3 -> 4 ... unless blocked
    model.table[3] = -30.0
    model.table[3, 4] = 0.0
    model.table[3, 2] = -5.0
    model.table[4] = -30.0
    model.table[4, 3] = 0.0
    model.table[4, 2] = -6.0
    assert decode(model, np.zeros((1, 1)), max_length=8).tolist() == [[3, 4, 3, 4, 3, 4, 3, 4]]
    # (3, 4, 3) once: after 3 4 3 4 the next 3 would repeat it, and <END> is the best left
    assert decode(model, np.zeros((1, 1)), max_length=8, block_trigrams=True).tolist() == [[3, 4, 3, 4, 2, 0, 0, 0]]


def test_diverse_beam_search_groups_choose_other_words():
    """Hand-worked: two groups of one beam over identical continuations; the second group's best
    word is the first group's unless diversity_lambda outweighs the difference. Break caught: the
    penalty not applied, applied to the first group, or counted per group instead of per word."""
    from core.model.decoding import _choose

    rank = np.log(np.array([[[0.1, 0.6, 0.3], [0.1, 0.6, 0.3]]]))  # (1 image, 2 beams, 3 words)
    beam, word = _choose(rank, 1, 0.0)
    assert word.tolist() == [[1, 1]] and beam.tolist() == [[0, 1]]
    beam, word = _choose(rank, 1, 1.0)  # log 0.6 - 1 < log 0.3: the second group turns to word 2
    assert word.tolist() == [[1, 2]] and beam.tolist() == [[0, 1]]
    beam, word = _choose(rank, 1, 0.5)  # log 0.6 - 0.5 > log 0.3: still word 1
    assert word.tolist() == [[1, 1]]
    rank3 = np.log(np.array([[[0.5, 0.3, 0.2]] * 3]))
    assert _choose(rank3, 1, 10.0)[1].tolist() == [[0, 1, 2]]  # each later group avoids both earlier
    model = MarkovChain(2, V=6)
    greedy = decode(model, np.zeros((1, 1)), max_length=6)
    same = beam_search(model, np.zeros((1, 1)), max_length=6, beam_size=3, group_size=3, diversity_lambda=0.0)[0]
    assert same.tolist() == greedy.tolist()  # three greedy groups, alike without the penalty
    with pytest.raises(ValueError, match="must be a multiple of group_size"):
        beam_search(model, np.zeros((1, 1)), beam_size=3, group_size=2)


def test_the_loop_figures_of_benchmarks_beam_loops():
    """Breaks caught: a trigram counted once as a repeat; a caption of max_length words not
    counted as unended; the bad ending read from the first word."""
    from benchmarks.beam_loops import measure, repeats_trigram

    assert not repeats_trigram("a large diamond diamond large diamond".split())
    assert repeats_trigram("a large diamond a large diamond".split())
    captions = ["a red square", "a b c a b c", " ".join(["x"] * 5), "a square of the"]
    references = [{"a red square"}, {"a"}, {"x"}, {"a square"}]
    row = measure(captions, references, max_length=5)
    assert row == {"exact": 0.25, "loops": 0.5, "unended": 0.5, "bad_ending": 0.25,
                   "length": 4.5, "common": "a red square (1)"}
