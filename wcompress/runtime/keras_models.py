"""Keras models from files: load_model in safe mode with one-line causes, and the weights of a weights-only
file or a TF2 checkpoint loaded into the model of --model-code."""

import os
import re
import shutil
import tempfile

from wcompress.errors import WcompressError
from wcompress.formats.tfenv import load as load_tensorflow
from wcompress.formats.tfenv import submodule, tf
from wcompress.runtime.user_code import model_from_code, resolve_custom_objects


def load_keras_model(path, unsafe=False, custom_objects=None):
    """keras.models.load_model in safe mode unless the user passed --unsafe, with the objects of
    --custom-objects (a spec or a dict); errors as one line that gives Keras's cause."""
    load_tensorflow()  # quiet, before Keras imports it
    import keras

    try:
        return keras.models.load_model(path, safe_mode=not unsafe, compile=False,
                                       custom_objects=resolve_custom_objects(custom_objects))
    except (ValueError, TypeError) as exc:
        raise WcompressError(f"Keras cannot load this model: {keras_load_cause(exc)}", path) from exc


# Keras nests each failing object's whole config in its message ("Error when deserializing class 'Dense'
# using config={…}. Exception encountered: …"), so the cause is the innermost "Exception encountered".
_KERAS_ADVICE = re.compile(r"\.? *(Make sure custom classes|Please ensure (you|that)|Full object config|"
                           r"If they are already decorated)")


_MISSING_OBJECT = re.compile(r"Could not locate (?:function|class) '([^']+)'|"
                             r"Could not interpret \w+(?: function)? identifier: (\S+)|Unknown \w+: '?([\w<>.]+)")


def keras_load_cause(exc, limit=300):
    """Keras's own reason a model did not load, in one line, with what to pass to fix it."""
    text = str(exc)
    cause = re.split(r"Exception encountered:\s*", text)[-1].strip()
    cause = _KERAS_ADVICE.split(cause.splitlines()[0] if cause else type(exc).__name__)[0].rstrip(". ")
    # Keras 3 stores a lambda as bytecode ({'value': [...]}), which no loader reads back.
    cause = re.sub(r"identifier: \{'value'.*", "identifier: a Python lambda stored as bytecode (no Keras loads "
                   "it back: save the model with a named function instead)", cause)
    if len(cause) > limit:
        cause = cause[:limit] + "…"
    if "safe_mode" in text:
        return f"{cause} (pass --unsafe to allow Lambda layers / custom code)"
    missing = _MISSING_OBJECT.search(cause)
    if missing and "stored as bytecode" not in cause:
        name = next(g for g in missing.groups() if g)
        how = (f"a dict custom_objects = {{'{name}': your_function}}" if not name.isidentifier()
               else f"a function or class named {name}")
        return f"{cause} (pass --custom-objects FILE.py defining {how})"
    return cause


_LOAD_WEIGHTS_SUFFIX = {"keras": (".keras",), "keras-h5": (".h5", ".hdf5"), "weights-h5": (".h5", ".hdf5"),
                        "keras-weights-h5": (".weights.h5",)}


def model_with_weights(spec, path, store):
    """The --model-code function's model with the weights of `path` (a Keras file or a TF2 checkpoint)."""
    model = model_from_code(spec)
    try:
        if store.format == "tf2-checkpoint":
            _restore_tf2_checkpoint(model, store)
        else:
            with _named_for_keras(path, _LOAD_WEIGHTS_SUFFIX[store.format]) as named:
                model.load_weights(named)
    except WcompressError as exc:
        raise WcompressError(f"the weights do not fit the model of --model-code {spec}: {exc}", path) from exc
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise WcompressError(f"the weights do not fit the model of --model-code {spec}: {_weights_cause(exc)}",
                             path) from exc
    return model


def _weights_cause(exc, limit=300):
    """Keras's reason in one line: "A total of 2 objects could not be loaded: <the example error>"."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    cause = lines[0]
    if cause.startswith("A total of") and len(lines) > 1:
        cause = cause.split(". Example error message")[0].rstrip(".") + ": " + lines[1]
    cause = re.split(r"\.? *(Target variable:|Expected:|List of objects)", cause)[0].rstrip(". ")
    return cause[:limit] + ("…" if len(cause) > limit else "")


def _named_for_keras(path, suffixes):
    """`path` itself, or a link to it named with a suffix Keras's load_weights picks the right reader by."""
    import contextlib

    if path.endswith(suffixes) and not (suffixes != (".weights.h5",) and path.endswith(".weights.h5")):
        return contextlib.nullcontext(path)

    @contextlib.contextmanager
    def linked():
        work = tempfile.mkdtemp(prefix="wcompress-weights-")
        named = os.path.join(work, "model" + suffixes[0])
        try:
            try:
                os.symlink(os.path.abspath(path), named)
            except OSError:
                shutil.copyfile(path, named)
            yield named
        finally:
            shutil.rmtree(work, ignore_errors=True)

    return linked()


def _restore_tf2_checkpoint(model, store):
    """Restore a TF2 object checkpoint into a Keras 3 model: as the object graph says
    (tf.train.Checkpoint(model=...) of the same Keras 3 architecture), else by matching variables.

    A Keras 2 checkpoint (`model.save_weights('x.ckpt')`, or tf.train.Checkpoint(model=...) of a Keras 2
    model) names its objects `layer_with_weights-N/…`, which no Keras 3 model has: each model variable is
    then paired with the checkpoint's variable of the same name (kernel, bias, moving_mean, …), the k-th
    of that name in the model with the k-th in the checkpoint's object order, and shapes must agree."""
    from wcompress.formats.tensors import TRAINING_STATE

    stored = sum(1 for info in store.tensors if info.role not in TRAINING_STATE)
    try:
        status = tf.train.Checkpoint(model=model).read(store.prefix).expect_partial()
        status.assert_existing_objects_matched()  # every variable of the model had a value
        if stored == len(model.weights):  # and no value was left over (a layer the model lacks)
            return
    except (AssertionError, ValueError, tf.errors.OpError):
        pass
    pairs = _match_checkpoint_variables(model, store)
    for variable, key in pairs:
        variable.assign(store.load(key))


def _match_checkpoint_variables(model, store):
    """[(model variable, checkpoint key)] for every variable of `model`, or a WcompressError with the cause."""
    trackable_object_graph_pb2 = submodule("core.protobuf.trackable_object_graph_pb2")

    from wcompress.formats.bundle import OBJECT_GRAPH_KEY

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(store.reader.get(OBJECT_GRAPH_KEY).item())
    stored = {}  # leaf name -> [(path, key)] in the object graph's depth-first order
    seen = {0}

    def walk(node_id, path):
        for child in graph.nodes[node_id].children:
            name = child.local_name
            if child.node_id in seen or "optimizer" in name.lower() or (node_id == 0 and name == "save_counter"):
                continue
            seen.add(child.node_id)
            for attribute in graph.nodes[child.node_id].attributes:
                if attribute.name == "VARIABLE_VALUE":
                    stored.setdefault(name.lstrip("_"), []).append((path + name, attribute.checkpoint_key))
            walk(child.node_id, path + name + "/")

    walk(0, "")
    wanted = {}
    for variable in model.weights:
        wanted.setdefault(variable.path.rsplit("/", 1)[-1].lstrip("_"), []).append(variable)
    pairs = []
    for leaf, variables in wanted.items():
        found = stored.get(leaf, [])
        if len(found) != len(variables):
            raise WcompressError(f"the model has {len(variables)} variable(s) named {leaf!r}, the checkpoint "
                                 f"{len(found)} (not counting optimizer state)")
        for variable, (ckpt_path, key) in zip(variables, found):
            shape = tuple(store.reader.shapes[key])
            if tuple(variable.shape) != shape:
                raise WcompressError(f"the model's {variable.path} has shape {tuple(variable.shape)}, the "
                                     f"checkpoint's {ckpt_path} {shape}")
            pairs.append((variable, key))
    from wcompress.formats.tensors import TRAINING_STATE

    used = {key for _, key in pairs}
    roles = {info.name: info.role for info in store.tensors}
    left = [path for found in stored.values() for path, key in found
            if key not in used and roles.get(key) not in TRAINING_STATE]
    if left:
        raise WcompressError(f"the checkpoint has {len(left)} variable(s) the model lacks, e.g. {left[0]}")
    return pairs
