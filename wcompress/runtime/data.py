"""Evaluation and calibration data: a .npz of named arrays, a .npy of inputs, or module:function returning
such a dict."""

import os

import numpy as np

from wcompress.errors import WcompressError


def load_data(spec):
    """DATA.npz (arrays `x` or named inputs, optional `y`), DATA.npy (the inputs `x`, no labels) or
    module:function returning such a dict."""
    import importlib

    if ":" in spec and not os.path.exists(spec):
        module, _, attr = spec.partition(":")
        try:
            data = getattr(importlib.import_module(module), attr)()
        except (ImportError, AttributeError) as exc:
            raise WcompressError(f"cannot import data loader {spec!r} ({exc})") from exc
    else:
        try:
            loaded = np.load(spec, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                data = {"x": loaded}
            else:
                with loaded as archive:
                    data = {k: archive[k] for k in archive.files}
        except (OSError, ValueError) as exc:
            raise WcompressError(f"not a readable .npz data file ({str(exc).splitlines()[0]})", spec) from exc
    if not isinstance(data, dict) or not [k for k in data if k != "y"]:
        raise WcompressError("data needs an input array (x, or one per model input) and optionally y", spec)
    return {k: np.asarray(v) for k, v in data.items()}
