"""Captioning models: the numpy recurrent decoders and the torch Transformer decoder."""
