"""The CS231n and original repository's import path of the numpy layers (core/layers/rnn_layers.py)
and of the recurrent cells (the top-level rnn_utils.py, lstm_utils.py)."""
from core.layers.rnn_layers import (  # noqa: F401
    affine_backward, affine_forward, sigmoid, softmax_loss, temporal_affine_backward,
    temporal_affine_forward, temporal_softmax_loss)
from lstm_utils import (  # noqa: F401
    lstm_backward, lstm_forward, lstm_step_backward, lstm_step_forward)
from rnn_utils import (  # noqa: F401
    rnn_backward, rnn_forward, rnn_step_backward, rnn_step_forward, word_embedding_backward,
    word_embedding_forward)
