"""Vocabulary and caption text, without the feature files: tokenizing, building a vocabulary,
encoding captions as word indices and decoding them back, reading a data folder's vocabulary file
and a dataset's fingerprint (the models import this, not the h5py reader of
core/data/coco_utils.py).

Shape letters: N captions, T (or L) time steps.
"""
import hashlib
import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np

from core.util.errors import UserError


def decode_captions(captions, idx_to_word):
    """Turn word indices into strings, dropping <START>/<NULL> and stopping at <END>.

    captions (N, T) or (T,) int -> list of N strings, or one string.
    """
    single = np.ndim(captions) == 1
    rows = [captions] if single else captions
    decoded = []
    for row in rows:
        words = []
        for i in row:
            word = idx_to_word[int(i)]
            if word == "<END>":
                break
            if word not in ("<NULL>", "<START>"):
                words.append(word)
        decoded.append(" ".join(words))
    return decoded[0] if single else decoded


SPECIAL_TOKENS = ("<NULL>", "<START>", "<END>", "<UNK>")


def index_vocabulary(word_to_idx):
    """word_to_idx -> idx_to_word (list; None where no word has that index), and the indices of
    <NULL> (required), <START> and <END> (None when absent: the CS231n notebooks check losses with
    a vocabulary such as {"<NULL>": 0, "cat": 2, "dog": 3}, which has neither)."""
    if "<NULL>" not in word_to_idx:
        raise ValueError("the vocabulary has no <NULL> token")
    idx_to_word = [None] * (max(word_to_idx.values()) + 1)
    for word, i in word_to_idx.items():
        idx_to_word[i] = word
    return idx_to_word, word_to_idx["<NULL>"], word_to_idx.get("<START>"), word_to_idx.get("<END>")


_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana and Han ideographs
_WORD = rf"[^\W_{_CJK}]+"  # letters and digits of any script, except the ones above
_TOKEN = re.compile(rf"[{_CJK}]|{_WORD}(?:'{_WORD})?")


def tokenize(caption):
    """Lower-case a caption (Unicode NFC) and split it into words: runs of letters and digits
    of any script with inner apostrophes ("café", "don't"); each kana or Han character is a
    word of its own, since those scripts put no spaces between words. Punctuation and symbols
    are dropped (`dropped_characters` counts them)."""
    return _TOKEN.findall(unicodedata.normalize("NFC", caption).lower())


def dropped_characters(caption, tokens):
    """How many non-space characters of a caption its tokens do not keep (punctuation, symbols)."""
    text = unicodedata.normalize("NFC", caption).lower()
    return sum(not ch.isspace() for ch in text) - sum(len(t) for t in tokens)


def build_vocab(tokenized, min_word_count=1):
    """tokenized: iterable of word lists -> idx_to_word: the special tokens, then every word
    seen at least min_word_count times, most frequent first (ties alphabetical)."""
    counts = Counter(w for words in tokenized for w in words)
    kept = sorted((w for w, c in counts.items() if c >= min_word_count and w not in SPECIAL_TOKENS),
                  key=lambda w: (-counts[w], w))
    return list(SPECIAL_TOKENS) + kept


def encode_captions(tokenized, word_to_idx, max_length=17):
    """Word lists -> int32 (N, max_length): <START> words <END> <NULL>...; long captions are
    cut to max_length - 2 words, unknown words become <UNK>."""
    out = np.full((len(tokenized), max_length), word_to_idx["<NULL>"], dtype=np.int32)
    unk = word_to_idx["<UNK>"]
    for row, words in enumerate(tokenized):
        ids = [word_to_idx["<START>"]] + [word_to_idx.get(w, unk) for w in words[:max_length - 2]]
        ids.append(word_to_idx["<END>"])
        out[row, :len(ids)] = ids
    return out


def load_vocab(base_dir):
    """-> idx_to_word (list), word_to_idx (dict) of a data directory."""
    path = require_file(Path(base_dir) / "coco2014_vocab.json", "check --data_dir")
    try:
        vocab = json.loads(path.read_text())
        idx_to_word, word_to_idx = list(vocab["idx_to_word"]), dict(vocab["word_to_idx"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a vocabulary file ({type(e).__name__}: {e})") from None
    wrong = [w for i, w in enumerate(idx_to_word) if word_to_idx.get(w) != i]
    if wrong or len(word_to_idx) != len(idx_to_word):
        example = f'"{wrong[0]}" is {idx_to_word.index(wrong[0])} in idx_to_word but ' \
                  f'{word_to_idx.get(wrong[0])} ' \
                  "in word_to_idx" if wrong else f"{len(idx_to_word)} vs {len(word_to_idx)} entries"
        raise UserError(f"{path}: idx_to_word and word_to_idx disagree ({example})")
    missing = [t for t in ("<NULL>", "<START>", "<END>") if t not in word_to_idx]
    if missing:
        raise UserError(f"{path}: the vocabulary has no {', '.join(missing)} token, which captions "
                        f"need")
    return idx_to_word, word_to_idx


def require_file(path, hint):
    """path if it is a file, else UserError naming it with the hint."""
    if not path.is_file():
        raise UserError(f"missing data file {path}: {hint}")
    return path


def dataset_id(train_pca_features, idx_to_word):
    """Short fingerprint of a dataset: its vocabulary and the first rows of its training
    features."""
    h = hashlib.sha256(json.dumps(list(idx_to_word)).encode())
    h.update(np.ascontiguousarray(np.asarray(train_pca_features[:256], dtype=np.float32)).tobytes())
    return h.hexdigest()[:16]
