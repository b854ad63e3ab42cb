"""The CS231n and original repository's import path of the data functions (core/data/coco_utils.py,
core/data/vocab.py)."""
from core.data.coco_utils import (  # noqa: F401
    COCO_DIR, SAMPLE_DIR, data_splits, default_data_dir, load_coco_data, load_vocab,
    sample_coco_minibatch, subset_rows)
from core.data.vocab import (  # noqa: F401
    build_vocab, decode_captions, encode_captions, index_vocabulary, tokenize)
