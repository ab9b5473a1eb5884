"""Before an output rebuilt from a container is renamed into place, it is opened with the stock reader of
its format (TensorFlow's checkpoint reader and protobuf parsers, zipfile and h5py for Keras files) and
must hold every tensor that was written, with its shape and dtype: a container whose checks all pass
but that describes a model the stock tools cannot read is an error, never a quiet exit 0."""

import json
import os
import zipfile

import h5py
import numpy as np

from wcompress.errors import WcompressError
from wcompress.formats.dtypes import dataset_dtype

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def verify_output(target, fmt, expected, source):
    """Raise a one-line error naming `source` unless `target` (staged, in format `fmt`) opens with the stock
    reader holding `expected` ({tensor name: (shape, dtype)}; None: only that it opens)."""
    try:
        found = _READERS[fmt](target)
    except WcompressError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the stock reader raises, the output is unusable
        from wcompress.errors import root_cause

        raise WcompressError(f"the restored {fmt} does not open with the stock reader ({root_cause(exc, 200)}): "
                             "damaged container, nothing written", source) from exc
    if expected is None:
        return
    for name, (shape, dtype) in expected.items():
        if name not in found:
            raise WcompressError(f"the restored {fmt} lacks tensor {name!r}: damaged container, nothing written",
                                 source)
        if tuple(found[name][0]) != tuple(shape) or np.dtype(found[name][1]) != np.dtype(dtype):
            raise WcompressError(f"the restored {fmt} holds {name!r} as {found[name][0]} {found[name][1]}, not "
                                 f"{tuple(shape)} {np.dtype(dtype)}: damaged container, nothing written", source)


def _checkpoint(prefix, meta=True):
    from wcompress.formats.tfenv import submodule, tf

    reader = tf.train.load_checkpoint(prefix)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    if OBJECT_GRAPH_KEY in shapes:  # a TF2 checkpoint: its object graph must parse
        graph = submodule("core.protobuf.trackable_object_graph_pb2").TrackableObjectGraph()
        graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
    if meta and os.path.exists(prefix + ".meta"):
        with open(prefix + ".meta", "rb") as fh:
            submodule("core.protobuf.meta_graph_pb2").MetaGraphDef().ParseFromString(fh.read())
    return {k: (shapes[k], dtypes[k].as_numpy_dtype) for k in shapes if k != OBJECT_GRAPH_KEY}


def _savedmodel(folder):
    from wcompress.formats.tfenv import submodule

    with open(os.path.join(folder, "saved_model.pb"), "rb") as fh:
        submodule("core.protobuf.saved_model_pb2").SavedModel().ParseFromString(fh.read())
    return _checkpoint(os.path.join(folder, "variables", "variables"), meta=False)


def _h5(source):
    found = {}
    with h5py.File(source, "r") as h5:
        h5.visititems(lambda name, obj: found.__setitem__(name, (obj.shape, dataset_dtype(obj)))
                      if isinstance(obj, h5py.Dataset) else None)
    return found


def _keras(path):
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
        if bad is not None:
            raise ValueError(f"archive entry {bad} fails its CRC")
        json.loads(archive.read("config.json"))
        with archive.open("model.weights.h5") as fh:
            return _h5(fh)


_READERS = {"tf1-checkpoint": _checkpoint, "tf2-checkpoint": _checkpoint, "savedmodel": _savedmodel,
            "keras": _keras, "keras-h5": _h5, "weights-h5": _h5, "keras-weights-h5": _h5}
