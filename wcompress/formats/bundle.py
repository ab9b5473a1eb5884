"""TensorFlow checkpoint bundles (`.index` + `.data-*`): lazy reading and sharded streaming writes."""

import os
import re

import numpy as np

from wcompress.errors import WcompressError
from wcompress.formats.tfenv import submodule, tf

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
# Tensors are written in shards of about this many bytes, so a write never holds the whole model.
DEFAULT_SHARD_BYTES = 256 * 2**20


class BundleReader:
    """Lists a bundle's keys, shapes and dtypes from its index; loads one tensor on demand."""

    def __init__(self, prefix):
        self.prefix = prefix
        if not os.path.exists(prefix + ".index"):
            raise WcompressError("no checkpoint index (.index file missing)", prefix + ".index")
        try:
            self._reader = tf.compat.v1.train.NewCheckpointReader(prefix)
            shapes = self._reader.get_variable_to_shape_map()
            dtypes = self._reader.get_variable_to_dtype_map()
        except (tf.errors.OpError, ValueError, RuntimeError, MemoryError) as exc:  # MemoryError: a crafted index
            raise WcompressError(f"not a readable TensorFlow checkpoint ({_first_line(exc)})", prefix) from exc
        self.shapes = {k: tuple(int(d) for d in v) for k, v in shapes.items()}
        self.dtypes = {k: np.dtype(v.as_numpy_dtype) if v != tf.string else np.dtype(object) for k, v in dtypes.items()}

    def keys(self):
        return list(self.shapes)

    def _data_bytes(self):
        if not hasattr(self, "_data_size"):
            self._data_size = sum(os.path.getsize(f) for f in data_files(self.prefix))
        return self._data_size

    def get(self, key):
        declared = int(np.prod(self.shapes[key], dtype=np.float64)) * self.dtypes[key].itemsize
        if self.dtypes[key] != object and declared > self._data_bytes():
            # A bundle stores tensors raw: one larger than its data files is a damaged or crafted index.
            raise WcompressError(f"tensor {key!r} declares {declared:,} bytes, more than the checkpoint's data "
                                 "files hold", self.prefix)
        try:
            value = self._reader.get_tensor(key)
        except (tf.errors.OpError, ValueError, RuntimeError, IndexError, MemoryError) as exc:  # IndexError: truncated
            raise WcompressError(f"cannot read tensor {key!r} ({_first_line(exc)})", self.prefix) from exc
        if isinstance(value, bytes):
            # np.asarray(bytes) makes a fixed-width bytes_ that drops trailing NULs: a serialized
            # object graph often ends in them. Keep the exact bytes in an object scalar.
            exact = np.empty((), dtype=object)
            exact[()] = value
            value = exact
        elif not isinstance(value, np.ndarray):
            value = np.asarray(value)
        if value.shape != self.shapes[key]:
            raise WcompressError(f"tensor {key!r} has shape {value.shape}, index says {self.shapes[key]}", self.prefix)
        return value


def data_files(prefix):
    """The `.data-XXXXX-of-YYYYY` files that belong to a prefix."""
    folder, base = os.path.split(prefix)
    pattern = re.compile(re.escape(base) + r"\.data-\d{5}-of-\d{5}$")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder or ".") if pattern.match(f))


def bundle_files(prefix):
    return [prefix + ".index"] + data_files(prefix)


def write_bundle(prefix, items, shard_bytes=DEFAULT_SHARD_BYTES):
    """Write (key, array) pairs, consumed lazily, as one bundle at `prefix`.

    Each shard is saved with SaveV2 as soon as it is full, then MergeV2Checkpoints joins the shards'
    indexes, exactly as TensorFlow's own sharded Saver does.
    """
    parts, batch, batch_bytes = [], [], 0

    def flush():
        nonlocal batch, batch_bytes
        if not batch:
            return
        part = f"{prefix}_part-{len(parts):05d}"
        names = [k for k, _ in batch]
        tensors = [tf.constant(v, dtype=tf.string) if v.dtype == object else v for _, v in batch]
        tf.raw_ops.SaveV2(prefix=part, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
        parts.append(part)
        batch, batch_bytes = [], 0

    for key, value in items:
        batch.append((key, value))
        batch_bytes += value.nbytes if value.dtype != object else 0
        if batch_bytes >= shard_bytes:
            flush()
    flush()
    if not parts:
        raise WcompressError("nothing to write: every tensor was dropped", prefix)
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts, destination_prefix=prefix, delete_old_dirs=False)
    return bundle_files(prefix)


def prune_object_graph(serialized, kept_keys):
    """Drop references to checkpoint keys that are no longer stored, so `restore()` never asks for them."""
    trackable_object_graph_pb2 = submodule("core.protobuf.trackable_object_graph_pb2")

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(serialized)
    emptied = set()
    for node_id, node in enumerate(graph.nodes):
        keep = [a for a in node.attributes if a.checkpoint_key in kept_keys]
        if len(keep) != len(node.attributes):
            del node.attributes[:]
            node.attributes.extend(keep)
            if not keep:
                emptied.add(node_id)
    for node in graph.nodes:
        slots = [s for s in node.slot_variables if s.slot_variable_node_id not in emptied]
        if len(slots) != len(node.slot_variables):
            del node.slot_variables[:]
            node.slot_variables.extend(slots)
    return graph.SerializeToString(deterministic=True)


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
