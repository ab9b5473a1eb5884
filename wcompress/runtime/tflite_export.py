"""TFLite export: the converter run on the model's weights as they are (sparsified or not), with int8
weight storage (dynamic-range quantization) and, where it is smaller, its sparse tensor encoding, so the
zeros a user paid for in quality are kept in the file they ship to a device."""

import contextlib
import os
import shutil
import tempfile

from wcompress.errors import WcompressError
from wcompress.formats.tfenv import tf


def export_tflite(path, dest, force=False, int8=True, unsafe=False, custom_objects=None, input_names=None,
                  output_name=None, feeds=()):
    """Write `dest` (.tflite) from a Keras model, a SavedModel, a TF1 graph (.meta) or a container of one."""
    from wcompress.formats import open_model
    from wcompress.formats.container import ContainerStore, restore

    if not str(dest).endswith(".tflite"):
        raise WcompressError("name the output NAME.tflite", dest)
    store = open_model(path)
    if os.path.realpath(dest) in {os.path.realpath(f) for f in list(store.files()) + [store.path]}:
        raise WcompressError("output would overwrite the input; choose another -o path", dest)
    if os.path.exists(dest) and not force:
        raise WcompressError("output exists; pass --force to overwrite it", dest)
    if isinstance(store, ContainerStore):
        from wcompress.formats.outputs import keras_suffix

        work = tempfile.mkdtemp(prefix="wcompress-export-")
        try:
            name = os.path.join(work, "model") + (os.sep if "checkpoint" in store.source_format
                                                  else keras_suffix(store.source_name))
            return export_tflite(restore(path, name).path, dest, force, int8, unsafe, custom_objects, input_names,
                                 output_name, feeds)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    content = _convert(store, int8, unsafe, custom_objects, input_names, output_name, feeds)
    folder = os.path.dirname(os.path.abspath(dest))
    os.makedirs(folder, exist_ok=True)
    handle, staged = tempfile.mkstemp(prefix=".wcompress-", suffix=".tflite", dir=folder)
    try:
        with os.fdopen(handle, "wb") as fh:
            fh.write(content)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staged, 0o666 & ~umask)  # as any file the user writes, not mkstemp's private mode
        os.replace(staged, dest)
    except BaseException:
        if os.path.exists(staged):
            os.remove(staged)
        raise
    return dest


def _convert(store, int8, unsafe, custom_objects, input_names, output_name, feeds):
    from wcompress.runtime.keras_models import load_keras_model

    if store.format in ("keras", "keras-h5"):
        converter = tf.lite.TFLiteConverter.from_keras_model(load_keras_model(store.path, unsafe, custom_objects))
        return _run(converter, int8, store.path)
    if store.format == "savedmodel":
        try:
            converter = tf.lite.TFLiteConverter.from_saved_model(store.path)
        except Exception as exc:  # noqa: BLE001 - the converter's own reason, in one line
            raise _converter_error(exc, store.path) from exc
        return _run(converter, int8, store.path)
    if store.format == "tf1-checkpoint" and store.meta:
        return _convert_graph(store, int8, input_names, output_name, feeds)
    raise WcompressError(f"a {store.format} holds no model to convert (a Keras model, SavedModel or TF1 graph with "
                         ".meta does)", store.path)


def _convert_graph(store, int8, input_names, output_name, feeds):
    """A TF1 graph: is-training flags and --feed values become constants, as inference runs it."""
    from wcompress.runtime.graphs import flag_feeds, infer_input, infer_output, parse_value
    from wcompress.formats.tf1_meta import load_meta_graph_def

    meta = load_meta_graph_def(store.meta)
    output_name = output_name or infer_output([meta], [store.path])
    input_names = list(input_names or [infer_input(meta, output_name, store.path)])
    feeds = tuple(feeds) + tuple(flag_feeds(meta, output_name, input_names, feeds, store.path))
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        nodes = {n.name: n for n in meta.graph_def.node}
        fixed = {}
        for spec in feeds:
            name, _, text = spec.partition("=")
            node = nodes.get(name.split(":")[0])
            if node is None:
                raise WcompressError(f"graph has no tensor {name!r}", store.path)
            fixed[name if ":" in name else name + ":0"] = tf.constant(
                parse_value(text, tf.as_dtype(node.attr["dtype"].type)))
        saver = tf.compat.v1.train.import_meta_graph(meta, input_map=fixed)
        saver.restore(session, store.prefix)

        def tensor(name):
            return graph.get_tensor_by_name(name if ":" in name else name + ":0")

        converter = tf.compat.v1.lite.TFLiteConverter.from_session(
            session, [tensor(n) for n in input_names], [tensor(output_name)])
        return _run(converter, int8, store.path)


def _run(converter, int8, path):
    """The smaller of the converter's output with and without its sparse encoding: it stores a tensor's
    non-zeros with int32/uint16 indices (and as float, not int8), which costs more than it saves unless
    most of the tensor is zero (seed 000's lesson)."""
    outputs = []
    for sparse in (False, True):
        converter.optimizations = ([tf.lite.Optimize.DEFAULT] if int8 else []) + (
            [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else [])
        try:
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), _native_stderr_quiet():
                outputs.append(converter.convert())  # Keras prints its export; MLIR its diagnostics
        except Exception as exc:  # noqa: BLE001 - the converter's own reason, in one line
            raise _converter_error(exc, path) from exc
    return min(outputs, key=len)


@contextlib.contextmanager
def _native_stderr_quiet():
    """The converter's C++ diagnostics go to file descriptor 2 (the exception carries them too)."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as quiet:
            os.dup2(quiet.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _converter_error(exc, path):
    from wcompress.errors import root_cause

    return WcompressError(f"the TFLite converter failed ({type(exc).__name__}: {root_cause(exc)})", path)


