"""CIDEr-D rewards for self-critical training, with document frequencies fixed in advance.

pycocoevalcap's CIDEr-D computes its document frequencies from the references of the very set
it scores, so a batch of sampled captions would be scored against the n-gram statistics of its
own few images (and every call would recompute them). Training needs the statistics of the
whole training set, computed once, and many quick per-caption scores against them. This module
is the same formula as pycocoevalcap's CiderScorer (n-grams 1..4, tf-idf vectors, clipped
cosine similarity, Gaussian length penalty with sigma 6, x10, averaged over references), and
gives its numbers when both use the same document frequencies (tested to 1e-6).

Captions are strings of space-separated words (as core.data.coco_utils.decode_captions makes them).
"""
import math
from collections import Counter

import numpy as np

N_GRAMS = 4
SIGMA = 6.0


def ngram_counts(caption, n=N_GRAMS):
    """"a b a" -> Counter of its 1..n-gram tuples."""
    words = caption.split()
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1)
                   for i in range(len(words) - k + 1))


class CiderD:
    """references: {image: [reference strings]} of the corpus whose document frequencies are used
    (for training: every training image). Reference vectors are computed once per image and cached.
    """

    def __init__(self, references):
        self.references = references
        self.document_frequency = Counter()
        for refs in references.values():
            self.document_frequency.update(set(g for ref in refs for g in ngram_counts(ref)))
        self.log_num_docs = math.log(float(len(references)))
        self._ref_vectors = {}

    def _vector(self, counts):
        """n-gram counts -> (tf-idf vectors per n, their norms (N_GRAMS,), length: the bigram count,
        as pycocoevalcap counts it)."""
        vec = [{} for _ in range(N_GRAMS)]
        norm = np.zeros(N_GRAMS)
        length = 0
        for ngram, tf in counts.items():
            n = len(ngram) - 1
            value = float(tf) * (self.log_num_docs
                                 - math.log(max(1.0, self.document_frequency[ngram])))
            vec[n][ngram] = value
            norm[n] += value * value
            if n == 1:
                length += tf
        return vec, np.sqrt(norm), length

    def _references(self, image):
        if image not in self._ref_vectors:
            self._ref_vectors[image] = [self._vector(ngram_counts(r))
                                        for r in self.references[image]]
        return self._ref_vectors[image]

    def score(self, caption, image):
        """CIDEr-D of one caption against the references of `image` (a key of `references`)."""
        vec, norm, length = self._vector(ngram_counts(caption))
        refs = self._references(image)
        total = np.zeros(N_GRAMS)
        for ref_vec, ref_norm, ref_length in refs:
            val = np.zeros(N_GRAMS)
            for n in range(N_GRAMS):
                for ngram, value in vec[n].items():
                    if ngram in ref_vec[n]:
                        val[n] += min(value, ref_vec[n][ngram]) * ref_vec[n][ngram]
                if norm[n] != 0 and ref_norm[n] != 0:
                    val[n] /= norm[n] * ref_norm[n]
            total += val * math.exp(-((length - ref_length) ** 2) / (2 * SIGMA ** 2))
        return float(total.mean() / len(refs) * 10.0)

    def scores(self, captions, images):
        """captions (M,) strings, images (M,) keys -> (M,) float64 CIDEr-D scores."""
        return np.array([self.score(c, int(i)) for c, i in zip(captions, images)])
