"""Test helpers. Reading outputs here uses stock TensorFlow, Keras and h5py only, never wcompress."""

import hashlib
import json
import os
import zipfile

import h5py
import numpy as np
from click.testing import CliRunner

from wcompress.cli import cli


def run_cli(*args, exit_code=0):
    """Run the CLI in-process; assert the exit code; return the result."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == exit_code, (result.exit_code, result.output, result.stderr)
    return result


def run_json(*args):
    return json.loads(run_cli(*args, "--json").stdout)


def run_error(*args):
    """A command that must fail as a user error: exit 2, one line on stderr, no traceback."""
    result = run_cli(*args, exit_code=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wcompress: error: ")
    assert "Traceback" not in result.output
    return lines[0]


def sparsified_figures(model, data, out, *sparsify_args):
    """sparsify MODEL -o OUT with these arguments, then evaluate OUT against MODEL on DATA: {metric: value}."""
    run_cli("sparsify", model, *sparsify_args, "-o", out)
    return {r["metric"]: r["value"] for r in run_json("evaluate", out, "--data", data, "--reference", model)["results"]}


def stock_tensors(path):
    """Every stored tensor of a model file, read with stock readers (name -> array)."""
    import tensorflow as tf

    path = str(path)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb")):
        path = os.path.join(path, "variables", "variables")
    if os.path.exists(path + ".index") or os.path.isdir(path):
        reader = tf.compat.v1.train.NewCheckpointReader(path)
        return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
                if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as fh:
            return _h5_datasets(h5py.File(fh, "r"))
    return _h5_datasets(h5py.File(path, "r"))


def _h5_datasets(h5):
    out = {}
    h5.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def assert_same_tensors(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert np.array_equal(a[k], b[k]), k


def digest(*paths):
    """Hash of every file under the given paths, to prove inputs are untouched."""
    h = hashlib.sha256()
    for p in paths:
        p = str(p)
        files = sorted(os.path.join(r, n) for r, _, ns in os.walk(p) for n in ns) if os.path.isdir(p) else [p]
        for f in files:
            h.update(f.encode())
            with open(f, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def tf1_predict(meta, prefix, feed, output):
    """Run a TF1 graph with stock import_meta_graph + Saver.restore."""
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2

    meta_def = meta_graph_pb2.MetaGraphDef()
    with open(meta, "rb") as fh:
        meta_def.ParseFromString(fh.read())
    for node in meta_def.graph_def.node:  # old graphs carry attrs TF 2.21 refuses
        if "_output_shapes" in node.attr:
            del node.attr["_output_shapes"]
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        saver = tf.compat.v1.train.import_meta_graph(meta_def)
        saver.restore(sess, prefix)
        return sess.run(output, feed)


def savedmodel_predict(folder, x):
    """Run a SavedModel's serving signature with the stock TF1 loader."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(folder))
        sig = meta.signature_def["serving_default"]
        (inp,) = [v.name for v in sig.inputs.values()]
        return sess.run({k: v.name for k, v in sig.outputs.items()}, {inp: x})


MUSICNN_IN = "model/Placeholder:0"
MUSICNN_TRAINING = "model/Placeholder_2:0"
MUSICNN_OUT = "model/Sigmoid:0"


def musicnn_feed(n=2, seed=0):
    x = np.random.RandomState(seed).rand(n, 187, 96).astype("float32")
    return {MUSICNN_IN: x, MUSICNN_TRAINING: False}


def as_version_1(container):
    """Rewrite a container as version 1 wrote it: no checksums, blob names in dataset attributes, skeleton
    files as xz-compressed images (version 9's trees rebuilt)."""
    import lzma
    import tempfile

    from wcompress.formats import h5tree
    from wcompress.formats.container.reader import _place_pooled_streams

    with h5py.File(container, "r+") as h5:
        index = json.loads(lzma.decompress(h5["index"][()].tobytes()))
        for n, (path, tree) in enumerate(sorted(index.pop("skeleton_trees", {}).items())):
            with tempfile.TemporaryDirectory() as work:
                h5tree.rebuild(tree, os.path.join(work, "skeleton.h5"))
                with open(os.path.join(work, "skeleton.h5"), "rb") as fh:
                    image = lzma.compress(fh.read())
            key = f"skeleton/{n + len(h5.get('skeleton', {}))}"
            h5[key] = np.frombuffer(image, dtype=np.uint8)
            index.setdefault("blobs", {})[key] = path
        if h5.attrs["version"] >= 9:  # offsets of pooled streams were implicit
            _place_pooled_streams(index["tensors"])
        for key, name in index.pop("blobs", {}).items():
            h5[key].attrs["path" if key.startswith("skeleton/") else "key"] = name
        index.pop("checksums", None)
        index.pop("attributes", None)
        packed = np.frombuffer(lzma.compress(json.dumps(index).encode()), dtype=np.uint8)
        del h5["index"]
        h5["index"] = packed
        del h5.attrs["index_crc32"]
        h5.attrs["version"] = 1


def abort_like_a_damaged_file(path):
    """Stands in for the HDF5 structure walk in tests: dies the way libhdf5 dies on a double free."""
    os.abort()


def split_labelled(data, at, folder):
    """A labelled .npz split at example `at` into (tune.npz, check.npz) in `folder`."""
    import numpy as np

    arrays = np.load(data)
    tune, check = folder / "tune.npz", folder / "check.npz"
    np.savez(tune, x=arrays["x"][:at], y=arrays["y"][:at])
    np.savez(check, x=arrays["x"][at:], y=arrays["y"][at:])
    return tune, check
