"""Layer 4: what compression methods share: the Pass interface, the runner that streams tensors through
passes, plans, N:M and SparseGPT, Keras's quantized layers. The passes themselves are plugins (plugins/)."""
