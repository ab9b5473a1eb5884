"""wcompress: compress trained TensorFlow checkpoints and Keras models after training."""

__version__ = "0.1.0"
