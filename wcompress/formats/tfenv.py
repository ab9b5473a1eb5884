"""TensorFlow, imported once, quietly, and only when first used: reading HDF5, .keras and containers
needs h5py alone, importing TensorFlow costs seconds and half a gigabyte before any work starts, and
the base install has none (`TensorFlowMissing` then says what to install).

`tf` is a stand-in whose first attribute access imports TensorFlow; `loaded()` says whether anything
has, so an error handler can tell a TensorFlow error without importing it."""

import os
import sys

__all__ = ["tf", "load", "loaded", "submodule"]


_module = None


def load():
    """The tensorflow module, imported with its start-up chatter silenced (not our users' output)."""
    global _module
    if _module is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
        try:
            import tensorflow
        except ModuleNotFoundError as exc:
            if exc.name != "tensorflow":
                raise  # TensorFlow is there but broken: its own message says more than ours would
            from wcompress.errors import TensorFlowMissing

            raise TensorFlowMissing() from exc
        tensorflow.get_logger().setLevel("ERROR")
        _module = tensorflow
    return _module


def submodule(name):
    """tensorflow.<name> (e.g. "core.protobuf.meta_graph_pb2"), TensorFlow loaded quietly first."""
    import importlib

    load()
    return importlib.import_module("tensorflow." + name)


def loaded():
    return "tensorflow" in sys.modules


def onednn_enabled():
    """Whether the TensorFlow running here uses oneDNN's kernels: on when TensorFlow was imported before us
    without TF_ENABLE_ONEDNN_OPTS=0 (load() sets it). Their convolution gradients crash this TensorFlow
    (a segfault in Conv2DBackpropFilter, seen on fer's CNN), so nothing here differentiates a model then."""
    load()
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # a TensorFlow without that probe: trust the setting
        return os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0"


class _LazyTensorFlow:
    def __getattr__(self, name):
        value = getattr(load(), name)
        setattr(self, name, value)  # the next access is a plain attribute
        return value

    def __repr__(self):
        return "<tensorflow, imported on first use>"


tf = _LazyTensorFlow()
