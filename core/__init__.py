"""From-scratch image-captioning decoders (RNN, LSTM, Transformer) and their training code."""
