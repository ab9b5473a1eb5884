"""wcompress: compress trained TensorFlow checkpoints and Keras models after training.

The library is the product (wcompress/api/); the `wcompress` command is a thin skin over it."""

__version__ = "0.1.0"

from wcompress.api import (
    autotune, average, compress, ensemble_search, evaluate, export, fp16, merge, pack, profile, quantize, report, restore,
    sparsify, strip, sweep)
from wcompress.errors import WcompressError, WcompressWarning  # noqa: E402

__all__ = ["profile", "report", "strip", "sparsify", "pack", "restore", "quantize", "fp16", "average", "merge",
           "export", "evaluate", "sweep", "autotune", "compress", "ensemble_search", "WcompressError", "WcompressWarning"]
