"""What the API takes, made into what the library reads: a model in memory saved to a private file, data
as arrays written to a private .npz, and the private paths kept out of the results."""

import os
import shutil
import tempfile

import numpy as np

from wcompress.errors import WcompressError


def is_keras_model(model):
    return type(model).__module__.startswith(("keras", "tf_keras")) and hasattr(model, "get_weights")


def fspath(path):
    return None if path is None else os.fspath(path)


def as_examples(data):
    """Calibration or evaluation data in any form the API takes: a `.npz` path (or module:function), an
    array, an (x, y) tuple, or a dict of named inputs. Returns {name: array} (`x`, or one per input, and `y`)."""
    if data is None:
        return None
    if isinstance(data, (str, os.PathLike)):
        from wcompress.runtime.data import load_data

        return load_data(os.fspath(data))
    if isinstance(data, dict):
        examples = {str(k): np.asarray(v) for k, v in data.items()}
    elif isinstance(data, tuple) and len(data) == 2:
        examples = {"x": np.asarray(data[0]), "y": np.asarray(data[1])}
    else:
        examples = {"x": np.asarray(data)}
    if not [k for k in examples if k != "y"]:
        raise WcompressError("data needs an input array (x, or one per model input) and optionally y")
    return examples


class Inputs:
    """A private folder for one call: models and data given in memory become files in it (worker processes
    and Ray read files), and whatever the call returns is scrubbed of its paths. The caller's objects are
    only read, never modified."""

    def __init__(self):
        self.folder = None
        self.labels = {}  # private path -> what the caller gave, in words

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, traceback):
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            if isinstance(exc, WcompressError):  # name what the caller gave, not a file they never saw
                exc.args = (self.relabel(str(exc)),)
                exc.path = self.relabel(exc.path) if exc.path else exc.path

    def relabel(self, text):
        for path, label in sorted(self.labels.items(), key=lambda item: -len(item[0])):
            text = text.replace(path, label)
        return text.replace(self.folder + os.sep, "")

    def _private(self, name):
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="wcompress-api-")
        path = os.path.join(self.folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    @property
    def in_memory(self):
        return self.folder is not None

    def model(self, model, name="model"):
        """A path for `model`: as given, or an in-memory Keras model saved to a private .keras."""
        if model is None or isinstance(model, (str, os.PathLike)):
            return fspath(model)
        if not is_keras_model(model):
            raise WcompressError(f"model must be a path or a keras.Model, not {type(model).__name__}")
        from wcompress.formats.keras_h5 import save_keras

        path = self._private(os.path.join(f"in-{len(os.listdir(self.folder)) if self.folder else 0}",
                                          f"{name}.keras"))
        save_keras(model, path)
        self.labels[path] = f"the in-memory {name}" if name != "model" else "the in-memory model"
        return path

    def data(self, data, name="data"):
        """A path for `data`: as given (a .npz, or module:function), or arrays written to a private .npz."""
        if data is None or isinstance(data, (str, os.PathLike)):
            return fspath(data)
        path = self._private(f"{name}.npz")
        np.savez(path, **as_examples(data))
        self.labels[path] = f"the {name} arrays"
        return path

    def output(self, output, name="model.keras"):
        """Where to write: the caller's output, or for an in-memory input without one, a private file."""
        if output is not None or not self.in_memory:
            return fspath(output)
        return self._private(os.path.join("result", name))

    def is_private(self, path):
        return self.folder is not None and isinstance(path, str) and \
            os.path.abspath(path).startswith(self.folder + os.sep)

    def scrub(self, value):
        """`value` with every private path replaced by None: they are gone once the call returns."""
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            files = [self.scrub(v) for v in value]
            return [] if value and all(self.is_private(v) for v in value) else files  # a private output's files
        if isinstance(value, tuple):
            return tuple(self.scrub(v) for v in value)
        if self.is_private(value):
            return None
        if isinstance(value, str) and self.folder and self.folder in value:  # a path inside a sentence
            return self.relabel(value)
        return value


def load_back(path, unsafe=False, custom_objects=None):
    """A Keras file we wrote, as a new keras.Model."""
    from wcompress.runtime.keras_models import load_keras_model

    return load_keras_model(path, unsafe=unsafe, custom_objects=custom_objects)


def bars(progress):
    """Progress bars on stderr only for progress=True; a callable receives messages, not bars."""
    return progress is True


def announce(progress, message):
    """Opt-in progress: the caller's callback, or a line on stderr."""
    if not progress:
        return
    if callable(progress):
        progress(message)
    else:
        import sys

        print(message, file=sys.stderr)
