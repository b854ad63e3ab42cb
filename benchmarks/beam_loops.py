"""The field's beam options on the loops of out-of-distribution scenes: the sample test scenes
drawn on a background that runs smoothly from dark to light grey (no training scene has one: the
plain-background proposer then returns the background's halves as objects, and a box decoder
answers with loops such as "a large diamond diamond large diamond ..."), captioned by one
checkpoint under each decoding.

Usage:
    python benchmarks/beam_loops.py updown_checkpoint.npz [--num_images 100] [--split test]

For each decoding: the share of captions that are exact (one of the scene's references), that
repeat a trigram (a loop), that reach --max_length words without ending, that end (before
--max_length) on a bad ending ("a", "the", "of", ...), their mean length in words, and the most
frequent caption. Also on the
scenes as drawn in the dataset (--variant test) for the same options' cost where nothing loops.
"""
import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.sample_robustness import variant_features  # noqa: E402
from core.data.vocab import decode_captions  # noqa: E402
from core.datasets import make_sample_dataset as sample  # noqa: E402
from core.model.checkpoint import load_checkpoint  # noqa: E402
from core.model.decoding import BAD_ENDINGS, decode  # noqa: E402
from core.model.registry import checkpoint_features  # noqa: E402

DECODINGS = (
    ("greedy", {}),
    ("greedy --block_trigrams --remove_bad_endings", {"block_trigrams": True,
                                                      "bad_endings": True}),
    ("beam 3", {"beam_size": 3}),
    ("beam 3 --block_trigrams", {"beam_size": 3, "block_trigrams": True}),
    ("beam 3 --block_trigrams --remove_bad_endings", {"beam_size": 3, "block_trigrams": True,
                                                      "bad_endings": True}),
    ("beam 6 --group_size 3 --diversity_lambda 0.5", {"beam_size": 6, "group_size": 3,
                                                      "diversity_lambda": 0.5}),
)


def repeats_trigram(words):
    """Whether a caption (list of words) holds some trigram twice."""
    grams = [tuple(words[k:k + 3]) for k in range(len(words) - 2)]
    return len(set(grams)) < len(grams)


def measure(captions, references, max_length):
    """captions (N,) strings, references (N,) sets -> the table's figures."""
    words = [c.split() for c in captions]
    common, count = Counter(captions).most_common(1)[0]
    return {"exact": np.mean([c in r for c, r in zip(captions, references)]),
            "loops": np.mean([repeats_trigram(w) for w in words]),
            "unended": np.mean([len(w) >= max_length for w in words]),
            "bad_ending": np.mean([bool(w) and len(w) < max_length and w[-1] in BAD_ENDINGS
                                   for w in words]),
            "length": np.mean([len(w) for w in words]), "common": f"{common} ({count})"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a decoder trained on the sample dataset")
    p.add_argument("--num_images", type=int, default=100, help="test scenes to draw")
    p.add_argument("--variant", default="gradient", choices=("gradient", "test"),
                   help="how the scenes are drawn (sample_robustness.py's copies)")
    p.add_argument("--max_length", type=int, default=30, help="the longest caption, in words")
    args = p.parse_args(argv)
    scenes = [sample.make_scene("test", i) for i in range(args.num_images)]
    references = [set(sample.captions(s)) for s in scenes]
    model, config = load_checkpoint(args.checkpoint)
    features = variant_features(scenes, args.variant, sample.SAMPLE_DIR, 32)
    regions = features[checkpoint_features(config)]
    print(f"{config['model']} ({args.checkpoint}), {args.num_images} test scenes drawn as "
          f"{args.variant!r}")
    print("| decoding | exact | repeats a trigram | reaches max_length | bad ending | mean words "
          "| most frequent caption |")
    print("|---|---|---|---|---|---|---|")
    bad = tuple(i for i, w in enumerate(config["idx_to_word"]) if w in BAD_ENDINGS)
    for name, options in DECODINGS:
        if options.get("bad_endings"):
            options = dict(options, bad_endings=bad)  # as inference.py's --remove_bad_endings
        words = decode(model, regions, max_length=args.max_length, **options)
        row = measure(decode_captions(words, config["idx_to_word"]), references,
                      args.max_length)
        print(f"| {name} | {row['exact']:.0%} | {row['loops']:.0%} | {row['unended']:.0%} | "
              f"{row['bad_ending']:.0%} | {row['length']:.1f} | {row['common']} |")


if __name__ == "__main__":
    main()
