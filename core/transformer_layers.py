"""The CS231n and original repository's import path of the transformer layers
(core/layers/transformer_layers.py)."""
from core.layers.transformer_layers import (  # noqa: F401
    MultiHeadAttention, PositionalEncoding, TransformerDecoder, TransformerDecoderLayer)
