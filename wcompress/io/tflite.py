"""TFLite export: the converter run on the model's weights as they are (sparsified or not), with int8
weight storage (dynamic-range quantization) and, where it is smaller, its sparse tensor encoding, so the
zeros a user paid for in quality are kept in the file they ship to a device."""

import contextlib
import os
import shutil
import tempfile

from ..errors import WcompressError
from .tfenv import tf


def export_tflite(path, dest, force=False, int8=True, unsafe=False, custom_objects=None, input_names=None,
                  output_name=None, feeds=()):
    """Write `dest` (.tflite) from a Keras model, a SavedModel, a TF1 graph (.meta) or a container of one."""
    from . import open_model
    from .container import ContainerStore, restore

    if not str(dest).endswith(".tflite"):
        raise WcompressError("name the output NAME.tflite", dest)
    store = open_model(path)
    if os.path.realpath(dest) in {os.path.realpath(f) for f in list(store.files()) + [store.path]}:
        raise WcompressError("output would overwrite the input; choose another -o path", dest)
    if os.path.exists(dest) and not force:
        raise WcompressError("output exists; pass --force to overwrite it", dest)
    if isinstance(store, ContainerStore):
        from .predict import _suffix

        work = tempfile.mkdtemp(prefix="wcompress-export-")
        try:
            name = os.path.join(work, "model") + (os.sep if "checkpoint" in store.source_format
                                                  else _suffix(store.source_name))
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
    from .predict import load_keras_model

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
    from .ensemble import _parse_value, flag_feeds, infer_input, infer_output
    from .tf1_meta import load_meta_graph_def

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
                _parse_value(text, tf.as_dtype(node.attr["dtype"].type)))
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
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # Keras prints its export
                outputs.append(converter.convert())
        except Exception as exc:  # noqa: BLE001 - the converter's own reason, in one line
            raise _converter_error(exc, path) from exc
    return min(outputs, key=len)


def _converter_error(exc, path):
    from ..errors import root_cause

    return WcompressError(f"the TFLite converter failed ({type(exc).__name__}: {root_cause(exc)})", path)


# TensorFlow Lite's interpreter trusts the file: a truncated or crafted flatbuffer can crash the process
# (a truncated fer model segfaults it). It is first loaded and run once on zeros in a guarded child
# (io/child.py), stopped by its CPU time: importing TensorFlow and one run of a large model take seconds.
PROBE_CPU_SECONDS = 20  # importing TensorFlow and one run of fer: 4.3 s of CPU
PROBE_CPU_SECONDS_PER_MIB = 0.5
_PROBED = set()


def probe_tflite(path):
    """In the child: load and run `path` once on zeros; {} or {"error": the interpreter's complaint}."""
    import warnings

    warnings.simplefilter("ignore")
    import numpy as np

    from .tfenv import tf

    try:
        interpreter = tf.lite.Interpreter(model_path=path)
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
        interpreter.invoke()
    except Exception as exc:  # noqa: BLE001 - the interpreter's refusal is the finding, reported in one line
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        return {"error": lines[-1] if lines else type(exc).__name__}
    return {}


def check_tflite(path):
    """Raise a one-line error if loading and running `path` crashes, spins or fails in TensorFlow Lite."""
    from . import child

    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key in _PROBED:
        return
    cpu = PROBE_CPU_SECONDS + PROBE_CPU_SECONDS_PER_MIB * stat.st_size / 2**20
    outcome = child.run(probe_tflite, [os.fspath(path)], cpu_seconds=cpu, fork=False,
                        env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    if outcome.cpu_exceeded or outcome.wall_exceeded:
        raise WcompressError(f"damaged TFLite file: loading it did not finish within {int(cpu)} s of CPU time", path)
    if outcome.signal:
        raise WcompressError(f"damaged TFLite file: loading it crashed TensorFlow Lite ({outcome.signal})", path)
    if outcome.exit_code or not isinstance(outcome.value, dict):
        raise WcompressError("not a TFLite model TensorFlow can run (the check exited without a result)", path)
    if outcome.value.get("error"):
        raise WcompressError(f"not a TFLite model TensorFlow can run ({outcome.value['error']})", path)
    _PROBED.add(key)
