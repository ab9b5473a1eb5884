"""wcompress: compress trained TensorFlow checkpoints and Keras models after training.

The library is the product (wcompress/api.py); the `wcompress` command is a thin skin over it."""

__version__ = "0.1.0"

from .api import pack, profile, report, restore, sparsify, strip  # noqa: E402
from .errors import WcompressError, WcompressWarning  # noqa: E402

__all__ = ["profile", "report", "strip", "sparsify", "pack", "restore", "WcompressError", "WcompressWarning"]
