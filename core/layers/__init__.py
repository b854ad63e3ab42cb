"""The layers the decoders are built from: numpy affine/softmax layers and torch attention
layers."""
