"""TF1 name-based checkpoints (+ .meta), TF2 object checkpoints and SavedModel variables."""

import os
import re
import shutil

import numpy as np

from wcompress.errors import WcompressError
from wcompress.formats import tf1_meta
from wcompress.formats.bundle import OBJECT_GRAPH_KEY, BundleReader, bundle_files, prune_object_graph, write_bundle
from wcompress.formats.store import ModelStore
from wcompress.formats.tensors import OPTIMIZER, TensorInfo, assign_layer_order, classify, natural_key
from wcompress.formats.tfenv import submodule

_TF2_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_SLOT_MARK = "/.OPTIMIZER_SLOT/"


def find_checkpoint_prefix(path):
    """The bundle prefix a user meant: a prefix, one of its files, or a folder with a `checkpoint` file."""
    if os.path.isdir(path):
        state = os.path.join(path, "checkpoint")
        if os.path.isfile(state):
            named = _checkpoint_state_path(state)
            if named is not None:
                # The recorded path is often absolute and stale (moved or downloaded checkpoints):
                # fall back to the same name inside this folder, which may be empty ("dir/").
                for candidate in (named, os.path.join(path, named), os.path.join(path, os.path.basename(named))):
                    if os.path.exists(candidate + ".index"):
                        return candidate
        indexes = sorted(f for f in os.listdir(path) if f.endswith(".index"))
        if len(indexes) == 1:
            return os.path.join(path, indexes[0][: -len(".index")])
        if len(indexes) > 1:
            names = ", ".join(i[: -len(".index")] or "(empty)" for i in indexes)
            raise WcompressError(f"folder holds several checkpoints ({names}); name one prefix", path)
        return None
    for suffix in (".index", ".meta"):
        if path.endswith(suffix) and os.path.exists(path):
            return path[: -len(suffix)]
    m = re.match(r"^(.*)\.data-\d{5}-of-\d{5}$", path)
    if m:
        return m.group(1)
    if os.path.exists(path + ".index"):
        return path
    return None


def _checkpoint_state_path(state_file):
    with open(state_file, errors="replace") as fh:
        for line in fh:
            m = re.match(r'\s*model_checkpoint_path:\s*"(.*)"\s*$', line)
            if m:
                return m.group(1)
    return None


def _split_key(key):
    """(variable path, is a TF2 key, is an optimizer slot) for a checkpoint key."""
    if _SLOT_MARK in key:
        return key.split(_SLOT_MARK)[0], True, True
    if key.endswith(_TF2_SUFFIX):
        return key[: -len(_TF2_SUFFIX)], True, False
    return key, False, False


def _describe(key, shape, dtype, model_path=None):
    var, _, slot = _split_key(key)
    if model_path is not None:
        var, slot = model_path, False
    parts = var.split("/")
    leaf = parts[-1]
    parents = parts[:-1] + ([".OPTIMIZER_SLOT"] if slot else [])
    role = OPTIMIZER if slot else classify(leaf, shape, dtype, parents)
    # An optimizer slot belongs to the layer of the variable it tracks: strip slot suffixes first.
    layer_parts = list(parts)
    if role == OPTIMIZER and not slot and len(layer_parts) > 1:
        layer_parts = layer_parts[:-1]
    layer = "/".join(layer_parts[:-1]) or var
    return TensorInfo(name=key, shape=shape, dtype=dtype, layer=layer, role=role)


def model_paths(serialized_graph):
    """checkpoint key -> the variable's path from the root that does not pass through an optimizer.

    Keras 3 optimizers track the model's own variables (`optimizer/_trainable_variables/0`), and
    TensorFlow may store a shared variable under that key: the object graph tells model from slot.
    """
    trackable_object_graph_pb2 = submodule("core.protobuf.trackable_object_graph_pb2")

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(serialized_graph)
    path = {0: []}
    queue = [0]
    while queue:
        node_id = queue.pop(0)
        for child in graph.nodes[node_id].children:
            if "optimizer" in child.local_name.lower() or child.node_id in path:
                continue
            path[child.node_id] = path[node_id] + [child.local_name]
            queue.append(child.node_id)
    return {attr.checkpoint_key: "/".join(path[node_id])
            for node_id, node in enumerate(graph.nodes) if node_id in path and path[node_id]
            for attr in node.attributes}


class CheckpointStore(ModelStore):
    """A checkpoint bundle. TF2 when it carries an object graph, TF1 otherwise (with an optional .meta)."""

    def __init__(self, path, prefix, layer_sequence=None, reader=None):
        super().__init__(path)
        self.prefix = prefix
        self.reader = reader or BundleReader(prefix)
        self.object_graph = OBJECT_GRAPH_KEY in self.reader.shapes
        self.meta = prefix + ".meta" if os.path.isfile(prefix + ".meta") else None
        self.format = "tf2-checkpoint" if self.object_graph else "tf1-checkpoint"
        keys = sorted((k for k in self.reader.shapes if k != OBJECT_GRAPH_KEY), key=natural_key)
        paths = model_paths(self.reader.get(OBJECT_GRAPH_KEY).item()) if self.object_graph else {}
        self.tensors = [_describe(k, self.reader.shapes[k], self.reader.dtypes[k], paths.get(k)) for k in keys]
        if layer_sequence is None and self.meta:
            layer_sequence = [_describe(n, (), "float32").layer for n in tf1_meta.variable_names(self.meta)]
            self.order_source = "graph"
        elif layer_sequence is not None:
            self.order_source = "file"
        assign_layer_order(self.tensors, layer_sequence)

    def load(self, name):
        return self.reader.get(name)

    def files(self):
        files = bundle_files(self.prefix) + ([self.meta] if self.meta else [])
        state = os.path.join(os.path.dirname(self.prefix), "checkpoint")
        return files + ([state] if os.path.isfile(state) else [])

    def write(self, target, produce):
        kept, retyped, scales = [], {}, {}

        def items():
            for info in self.tensors:
                value = produce(info)
                if value is None:
                    continue
                kept.append(info.name)
                if value.dtype != info.dtype:
                    retyped[info.name] = value.dtype
                if getattr(value, "scale", None) is not None:  # quantized codes: the graph dequantizes
                    scales[info.name] = value.scale
                    value = np.asarray(value)
                yield info.name, value
            if self.object_graph:
                graph = self.reader.get(OBJECT_GRAPH_KEY).item()
                if len(kept) != len(self.tensors):
                    graph = prune_object_graph(graph, set(kept) | {OBJECT_GRAPH_KEY})
                yield OBJECT_GRAPH_KEY, _string_scalar(graph)

        files = write_bundle(target, items())
        if scales and not self.meta:
            raise WcompressError("quantized tensors need the .meta graph to dequantize them", self.path)
        if self.meta:
            files.append(self._write_meta(target + ".meta", kept, retyped, scales))
        state = os.path.join(os.path.dirname(target), "checkpoint")
        with open(state, "w") as fh:
            name = os.path.basename(target)
            fh.write(f'model_checkpoint_path: "{name}"\nall_model_checkpoint_paths: "{name}"\n')
        files.append(state)
        return files


    def _write_meta(self, meta_out, kept, retyped, scales=None):
        if len(kept) == len(self.tensors) and not retyped:
            shutil.copyfile(self.meta, meta_out)
        else:
            tf1_meta.rewrite(self.meta, meta_out, kept, retyped, scales)
        return meta_out

    def skeleton(self, kept, retyped, workdir):
        """What a container needs besides tensors to rebuild this checkpoint: (files, raw blobs)."""
        files, raw = {}, {}
        if self.meta:
            with open(self._write_meta(os.path.join(workdir, "model.meta"), kept, retyped), "rb") as fh:
                files["model.meta"] = fh.read()
        if self.object_graph:
            graph = self.reader.get(OBJECT_GRAPH_KEY).item()
            raw[OBJECT_GRAPH_KEY] = graph if len(kept) == len(self.tensors) else prune_object_graph(
                graph, set(kept) | {OBJECT_GRAPH_KEY})
        return files, raw

    @classmethod
    def from_skeleton(cls, folder, reader):
        prefix = os.path.join(folder, "model")
        return cls(prefix, prefix, reader=reader)


def _string_scalar(data):
    arr = np.empty((), dtype=object)
    arr[()] = data
    return arr


class SavedModelStore(CheckpointStore):
    """A SavedModel folder: its variables bundle is the tensor store; everything else is copied untouched."""

    def __init__(self, path, layer_sequence=None, reader=None):
        prefix = os.path.join(path, "variables", "variables")
        if reader is None and not os.path.exists(prefix + ".index"):
            raise WcompressError("SavedModel has no variables/variables.index", path)
        super().__init__(path, prefix, layer_sequence, reader)
        self.format = "savedmodel"
        self.meta = None

    def files(self):
        return [os.path.join(r, n) for r, _, ns in os.walk(self.path) for n in ns]

    def write(self, target, produce):
        dropped, retyped = [], {}

        def keep_track(info):
            value = produce(info)
            if value is None:
                dropped.append(info.name)
            elif value.dtype != info.dtype:
                retyped[info.name] = value.dtype
            return value

        shutil.copytree(self.path, target, ignore=lambda d, names: ["variables"] if d == self.path else [])
        os.makedirs(os.path.join(target, "variables"))
        source_vars = os.path.join(self.path, "variables")
        for extra in os.listdir(source_vars) if os.path.isdir(source_vars) else []:
            if not extra.startswith("variables."):
                shutil.copy2(os.path.join(self.path, "variables", extra), os.path.join(target, "variables", extra))
        CheckpointStore.write(self, os.path.join(target, "variables", "variables"), keep_track)
        os.remove(os.path.join(target, "variables", "checkpoint"))
        if dropped or retyped:
            tf1_meta.update_savedmodel_restore(os.path.join(target, "saved_model.pb"), dropped, retyped)
        return [target]

    def skeleton(self, kept, retyped, workdir):
        files, raw = CheckpointStore.skeleton(self, kept, retyped, workdir)
        bundle = set(bundle_files(self.prefix))
        for root, _, names in os.walk(self.path):
            for name in names:
                full = os.path.join(root, name)
                if full not in bundle:
                    with open(full, "rb") as fh:
                        files[os.path.relpath(full, self.path)] = fh.read()
        dropped = [t.name for t in self.tensors if t.name not in set(kept)]
        if dropped or retyped:
            pb = os.path.join(workdir, "saved_model.pb")
            with open(pb, "wb") as fh:
                fh.write(files["saved_model.pb"])
            tf1_meta.update_savedmodel_restore(pb, dropped, retyped)
            with open(pb, "rb") as fh:
                files["saved_model.pb"] = fh.read()
        return files, raw

    @classmethod
    def from_skeleton(cls, folder, reader):
        return cls(folder, reader=reader)
