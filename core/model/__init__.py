"""The decoders, their one table of types (registry), decoding, and checkpoints without pickle."""
