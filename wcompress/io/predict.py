"""Running a model on data: Keras files, SavedModel signatures, TF1 MetaGraphs (+ checkpoint)."""

import functools
import inspect
import os
import re
import shutil
import sys
import tempfile

import numpy as np

from ..errors import WcompressError
from ..progress import batch_progress
from .tfenv import load as load_tensorflow
from .tfenv import submodule, tf


class Predictor:
    """inputs: {name: (shape without batch, numpy dtype)}; predict(data dict) -> one output array."""

    inputs = {}

    def run(self, batch):
        raise NotImplementedError

    def close(self):
        pass

    # In-memory variants (sweep, autotune): the model's own variables, read and overwritten in place, so a
    # variant costs one prediction instead of a write and a reload. Handles are opaque to callers.
    def weights(self):
        """[(handle, numpy array)] of every variable the loaded model holds; [] where unsupported."""
        return []

    def assign(self, handle, array):
        raise NotImplementedError

    def handle_key(self, handle):
        """A hashable name for a handle of weights()."""
        return handle

    def kernel_input_hessians(self, data, batch_size=16, show_progress=False):
        """{handle key: X^T X / n} of the inputs of each kernel a product reads (io/capture.py)."""
        return {}

    def _accumulate(self, step, data, batch_size, show_progress):
        """Run step(batch) -> {key: (X^T X, rows)} over the data; the mean per key, in float64."""
        feeds = self.match(data)
        n = next(iter(feeds.values())).shape[0]
        sums, rows = {}, {}
        with batch_progress(n, enabled=show_progress) as advance:
            for start in range(0, n, batch_size):
                for key, (gram, count) in step({k: v[start:start + batch_size] for k, v in feeds.items()}).items():
                    sums[key] = sums.get(key, 0) + np.asarray(gram, dtype=np.float64)
                    rows[key] = rows.get(key, 0) + int(count)
                advance(min(batch_size, n - start))
        return {key: sums[key] / max(1, rows[key]) for key in sums}

    def predict(self, data, batch_size=256, show_progress=False):
        feeds = self.match(data)
        n = next(iter(feeds.values())).shape[0]
        outputs = []
        with batch_progress(n, enabled=show_progress) as advance:
            for start in range(0, n, batch_size):
                outputs.append(np.asarray(self.run({k: v[start:start + batch_size] for k, v in feeds.items()})))
                advance(min(batch_size, n - start))
        return np.concatenate(outputs).astype(np.float32, copy=False) if outputs else np.zeros((0,), np.float32)

    def match(self, data):
        """Pair data arrays with model inputs (`x` for a single input), checking shapes."""
        arrays = {k: v for k, v in data.items() if k != "y"}
        if len(self.inputs) == 1 and len(arrays) == 1:
            (name,), (array,) = self.inputs.keys(), arrays.values()
            pairs = {name: array}
        else:
            missing = [n for n in self.inputs if n not in arrays and _short(n) not in arrays]
            if missing:
                raise WcompressError(f"data has arrays {sorted(arrays)}, model needs inputs {sorted(self.inputs)}")
            pairs = {n: arrays[n] if n in arrays else arrays[_short(n)] for n in self.inputs}
        lengths = {a.shape[0] for a in pairs.values()}
        if len(lengths) != 1:
            raise WcompressError(f"data arrays differ in length: {sorted(lengths)}")
        for name, array in pairs.items():
            shape, dtype = self.inputs[name]
            if len(array.shape) - 1 != len(shape) or any(
                    d is not None and d != a for d, a in zip(shape, array.shape[1:])):
                raise WcompressError(f"data for input {name!r} has shape {tuple(array.shape)}, "
                                     f"the model expects (N, {', '.join('?' if d is None else str(d) for d in shape)})")
            pairs[name] = array.astype(dtype, copy=False)
        return pairs


def _short(name):
    return name.split(":")[0].split("/")[-1]


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


@functools.lru_cache(maxsize=None)
def _custom_objects_from(spec):
    """{name: object} from a FILE.py or module (its custom_objects dict, else its public functions and
    classes) or from module:attr (a dict, or one object); imported once per process."""
    module, attr = _import_user_code(spec, "--custom-objects")
    found = getattr(module, attr or "custom_objects", None)
    if attr and found is None:
        raise WcompressError(f"--custom-objects: {module.__name__} has no attribute {attr!r}")
    if isinstance(found, dict):
        objects = dict(found)
    elif found is not None and not inspect.ismodule(found):
        objects = {attr or found.__name__: found}
    else:
        source = found or module
        objects = {name: obj for name, obj in vars(source).items() if not name.startswith("_")
                   and (inspect.isfunction(obj) or inspect.isclass(obj))
                   and getattr(obj, "__module__", None) == source.__name__}
    if not objects:
        raise WcompressError("--custom-objects: defines no public function or class (nor a custom_objects dict)",
                             spec)
    # A model saved again after loading names each object by its own name, e.g. a Keras 2 '<lambda>'
    # activation becomes 'scaled_tanh': knowing both keeps the merged or converted model loadable.
    for obj in list(objects.values()):
        name = getattr(obj, "__name__", None)
        if name and name.isidentifier():
            objects.setdefault(name, obj)
    return objects


def _import_user_code(spec, option):
    """FILE.py[:attr] or module[:attr] -> (module, attr or None); errors name `option` (--custom-objects,
    --model-code)."""
    import importlib
    import importlib.util

    target, _, attr = spec.rpartition(":") if ":" in spec else (spec, "", "")
    try:
        if target.endswith(".py") or os.sep in target:
            if not os.path.isfile(target):
                raise WcompressError(f"{option}: no such Python file", target)
            name = (f"wcompress_{option.strip('-').replace('-', '_')}_"
                    + re.sub(r"\W", "_", os.path.splitext(os.path.basename(target))[0]))
            module_spec = importlib.util.spec_from_file_location(name, target)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module  # dataclasses and pickling look their module up by name
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            return module, attr or None
        return importlib.import_module(target), attr or None
    except WcompressError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code failing to import is reported, in one line
        from ..errors import root_cause

        raise WcompressError(f"{option}: cannot import it ({type(exc).__name__}: {root_cause(exc)})",
                             spec) from exc


def resolve_custom_objects(custom_objects):
    """None, a dict, or a --custom-objects spec (FILE.py, module, module:attr) -> a dict or None."""
    if custom_objects is None or isinstance(custom_objects, dict):
        return custom_objects
    return _custom_objects_from(str(custom_objects))


def custom_object_scope(custom_objects):
    """Make the objects visible to every Keras load inside the block (also the conversions of io/outputs)."""
    import contextlib

    objects = resolve_custom_objects(custom_objects)
    if not objects:
        return contextlib.nullcontext()
    load_tensorflow()  # quiet, before Keras imports it
    import keras

    return keras.saving.custom_object_scope(objects)


class KerasPredictor(Predictor):
    """A Keras model: loaded from `path` with load_model, or `model`, one already built (--model-code)."""

    def __init__(self, path=None, unsafe=False, custom_objects=None, model=None):
        self.model = model if model is not None else load_keras_model(path, unsafe, custom_objects)
        self.inputs = {t.name: (tuple(t.shape[1:]), np.dtype(t.dtype)) for t in self.model.inputs}

    def run(self, batch):
        values = [batch[t.name] for t in self.model.inputs]
        if getattr(self, "_call", None) is None:
            # Traced once, as model.predict does (eager calls cost 1.5x on a small CNN); it reads the
            # variables at each call, so weights assigned in memory are the ones run.
            model = self.model
            self._call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        out = self._call(values if len(values) > 1 else values[0])
        if isinstance(out, (list, tuple)):
            out = out[0]
        return np.asarray(out)

    def weights(self):
        return [(i, np.asarray(v.numpy())) for i, v in enumerate(self.model.weights)]

    def assign(self, handle, array):
        self.model.weights[handle].assign(array)

    def kernel_input_hessians(self, data, batch_size=16, show_progress=False):
        import keras

        index = {id(v): i for i, v in enumerate(self.model.weights)}
        targets = []
        for layer in self.model.layers:  # nested models' layers have no input in this model's graph
            owner = layer.cell if _recurrent(layer) else layer
            kernels = [index.get(id(getattr(owner, a, None))) for a in _KERNEL_ATTRS.get(type(layer).__name__, ())]
            shape = _kernel_patch(layer)
            if shape is None or None in kernels or not kernels:
                continue
            try:
                inputs = _layer_inputs(layer, shape)
            except (AttributeError, ValueError):  # a layer called more than once has no single input
                continue
            if inputs:
                targets.append((layer, kernels, shape, inputs))
        if not targets:
            return {}
        probe = keras.Model(self.model.inputs, [t for *_, inputs in targets for t in inputs])
        sequences = {id(layer): _sequence_copy(layer) for layer, _, shape, _ in targets if shape[0] == "recurrent"}

        @tf.function(reduce_retracing=True)
        def grams(x):
            outs = probe(x, training=False)
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
            result = []
            for layer, _, shape, inputs in targets:
                seen, outs = outs[:len(inputs)], outs[len(inputs):]
                result.append(_recurrent_grams(layer, sequences[id(layer)], *seen) if shape[0] == "recurrent"
                              else _layer_grams(layer, shape, seen[0]))
            return result

        def step(batch):
            values = [batch[t.name] for t in self.model.inputs]
            result = grams(values if len(values) > 1 else values[0])
            return {key: (g.numpy(), c.numpy()) for (_, keys, _, _), pairs in zip(targets, result)
                    for key, (g, c) in zip(keys, pairs)}

        return self._accumulate(step, data, batch_size, show_progress)


class GraphPredictor(Predictor):
    """A TF1 graph in its own session: a MetaGraph + checkpoint, or a SavedModel via the stock v1 loader."""

    def __init__(self, path, kind, input_names=None, output_name=None, feeds=(), meta=None, prefix=None):
        from .ensemble import _parse_value, flag_feeds, infer_input, infer_output
        from .tf1_meta import load_meta_graph_def

        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            if kind == "savedmodel":
                meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)
                signature = meta_graph.signature_def.get("serving_default")
                sig_inputs = {k: v.name for k, v in signature.inputs.items()} if signature else {}
                sig_outputs = {k: v.name for k, v in signature.outputs.items()} if signature else {}
                input_names = [sig_inputs.get(n, n) for n in input_names] if input_names else list(sig_inputs.values())
                if output_name is None and len(sig_outputs) != 1:
                    raise WcompressError(f"name the output with --output-tensor; signature outputs: "
                                         f"{', '.join(f'{k} ({v})' for k, v in sig_outputs.items())}", path)
                output_name = sig_outputs.get(output_name, output_name) if output_name else next(iter(
                    sig_outputs.values()))
            else:
                # As merge does: the output and input are inferred when unambiguous, an is-training
                # flag is fed False, and any other placeholder the output needs is refused by name.
                meta_def = load_meta_graph_def(meta)
                output_name = output_name or infer_output([meta_def], [path])
                input_names = input_names or [infer_input(meta_def, output_name, path)]
                feeds = tuple(feeds) + tuple(flag_feeds(meta_def, output_name, input_names, feeds, path))
                saver = tf.compat.v1.train.import_meta_graph(meta_def)
                saver.restore(self.session, prefix)
            self.fixed = {}
            for spec in feeds:
                name, _, text = spec.partition("=")
                tensor = self.graph.get_tensor_by_name(name if ":" in name else name + ":0")
                self.fixed[tensor] = _parse_value(text, tensor.dtype)
            self.output = self._tensor(output_name, path)
            self.inputs = {}
            for name in input_names:
                tensor = self._tensor(name, path)
                shape = tuple(tensor.shape.as_list()[1:]) if tensor.shape.rank is not None else ()
                self.inputs[tensor.name] = (shape, tensor.dtype.as_numpy_dtype)

    def _tensor(self, name, path):
        try:
            return self.graph.get_tensor_by_name(name if ":" in name else name + ":0")
        except (KeyError, ValueError) as exc:
            raise WcompressError(f"graph has no tensor {name!r}", path) from exc

    def run(self, batch):
        return self.session.run(self.output, {**self.fixed, **batch})

    def weights(self):
        with self.graph.as_default():
            variables = tf.compat.v1.global_variables()
        if not variables:
            return []
        try:
            values = self.session.run(variables)
        except tf.errors.OpError:  # some were never restored (a stripped graph keeps its optimizer's slots)
            with self.graph.as_default():
                missing = {name.decode() for name in self.session.run(
                    tf.compat.v1.report_uninitialized_variables(variables))}
            variables = [v for v in variables if v.op.name not in missing]
            values = self.session.run(variables)
        return [(v, np.asarray(value)) for v, value in zip(variables, values)]

    def assign(self, handle, array):
        # Feeds the initializer's value input: no op is added to the graph per variant.
        self.session.run(handle.initializer, {handle.initializer.inputs[1]: array})

    def handle_key(self, handle):
        return handle.op.name

    def kernel_input_hessians(self, data, batch_size=16, show_progress=False):
        fetches = {}
        with self.graph.as_default(), tf.name_scope("wcompress_capture"):
            for op in self.graph.get_operations():
                shape = _op_patch(op)
                if shape is None:
                    continue
                variable = _variable_behind(op.inputs[1])
                if variable is None:
                    continue
                x = op.inputs[0]
                if op.type == "MatMul" and op.get_attr("transpose_a"):
                    x = tf.transpose(x)
                fetches.setdefault(variable, []).append(_gram(_patches(x, shape)))
        if not fetches:
            return {}

        def step(batch):
            values = self.session.run(fetches, {**self.fixed, **batch})
            return {key: (sum(g for g, _ in parts), sum(c for _, c in parts)) for key, parts in values.items()}

        return self._accumulate(step, data, batch_size, show_progress)

    def close(self):
        self.session.close()


# --- calibration: a kernel's inputs as rows of X, so that the product is X @ kernel.reshape(-1, out) ------

# The kernels of each Keras layer kind whose inputs are captured, in the order _layer_grams returns them.
_KERNEL_ATTRS = {"Dense": ("kernel",), "Conv1D": ("kernel",), "Conv2D": ("kernel",),
                 "DepthwiseConv2D": ("kernel",), "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel"),
                 # Recurrent layers: attributes of their cell; the kernel reads x_t, the recurrent kernel h_(t-1).
                 "LSTM": ("kernel", "recurrent_kernel"), "GRU": ("kernel", "recurrent_kernel"),
                 "SimpleRNN": ("kernel", "recurrent_kernel")}


def _recurrent(layer):
    return type(layer).__name__ in ("LSTM", "GRU", "SimpleRNN") and hasattr(layer, "cell")


def _kernel_patch(layer):
    """How a Keras layer's input becomes rows of X: ("dense",) or (kind, sizes, strides, rates, padding)."""
    kind = type(layer).__name__
    if kind == "Dense":
        return ("dense",)
    if _recurrent(layer):
        # A GRU with reset_after=False multiplies r * h_(t-1), not h_(t-1), by part of its recurrent kernel.
        if getattr(layer, "stateful", False) or (kind == "GRU" and not getattr(layer.cell, "reset_after", True)):
            return None
        return ("recurrent",)
    if kind not in _KERNEL_ATTRS or getattr(layer, "groups", 1) != 1 or getattr(layer, "depth_multiplier", 1) != 1:
        return None
    if getattr(layer, "data_format", "channels_last") != "channels_last" or layer.padding not in ("valid", "same"):
        return None
    size, stride, rate = (tuple(getattr(layer, a)) for a in ("kernel_size", "strides", "dilation_rate"))
    if kind == "Conv1D":
        size, stride, rate = (1,) + size, (1,) + stride, (1,) + rate
    return ("conv" if kind.startswith("Conv") else "depthwise", size, stride, rate, layer.padding.upper())


def _layer_grams(layer, shape, x):
    """[(X^T X, rows)] for each of the layer's _KERNEL_ATTRS. A depthwise kernel's channels each see their
    own patches: one (k x k) matrix per channel. A separable layer's pointwise kernel sees the depthwise
    output (there is no bias between the two)."""
    if shape[0] != "depthwise":
        return [_gram(_patches(x, shape))]
    _, size, stride, rate, padding = shape
    channels = x.shape[-1]
    patches = tf.reshape(tf.image.extract_patches(x, (1, *size, 1), (1, *stride, 1), (1, *rate, 1), padding),
                         (-1, size[0] * size[1], channels))
    patches = tf.cast(patches, tf.float32)
    grams = [(tf.einsum("nkc,nlc->ckl", patches, patches), tf.shape(patches)[0])]
    if type(layer).__name__ == "SeparableConv2D":
        inner = tf.nn.depthwise_conv2d(x, tf.cast(layer.depthwise_kernel, x.dtype), (1, *stride, 1), padding,
                                       dilations=rate)
        grams.append(_gram(tf.reshape(inner, (-1, channels))))
    return grams


def _layer_inputs(layer, shape):
    """The tensors a layer's capture needs: its input, and a recurrent layer's mask when it was given one
    (Keras records it as a second input); None for a layer called on anything else (initial states)."""
    given = layer.input
    if not isinstance(given, (list, tuple)):
        return [given]
    if shape[0] == "recurrent" and len(given) == 2 and len(given[1].shape) == 2 and str(given[1].dtype) == "bool":
        return list(given)
    return None


def _sequence_copy(layer):
    """The recurrent layer again, returning every step's output in time order, with the same weights."""
    config = {**layer.get_config(), "return_sequences": True, "return_state": False, "go_backwards": False,
              "name": layer.name + "_wcompress_capture"}
    copy = type(layer).from_config(config)
    copy.build(tuple(_layer_inputs(layer, ("recurrent",))[0].shape))
    copy.set_weights(layer.get_weights())
    return copy


def _recurrent_grams(layer, sequence, x, mask=None):
    """[(X^T X, rows)] for the kernel (rows: the inputs x_t) and the recurrent kernel (rows: the state
    h_(t-1) each step starts from, zeros at the first), over the steps the layer's mask lets through (a
    masked step leaves the state as it was, and is not a row)."""
    mask = tf.ones(tf.shape(x)[:2], tf.bool) if mask is None else tf.cast(mask, tf.bool)
    if layer.go_backwards:
        x, mask = tf.reverse(x, [1]), tf.reverse(mask, [1])
    outputs = sequence(x, mask=mask, training=False)
    # The state after each step: the step's output where it ran, the state before where it was masked.
    carried = tf.scan(lambda state, step: tf.where(step[1][:, None], step[0], state),
                      (tf.transpose(outputs, (1, 0, 2)), tf.transpose(mask)),
                      initializer=tf.zeros_like(outputs[:, 0]))
    before = tf.concat([tf.zeros_like(carried[:1]), carried[:-1]], axis=0)  # (steps, batch, units)
    before = tf.transpose(before, (1, 0, 2))
    return [_gram(tf.boolean_mask(x, mask)), _gram(tf.boolean_mask(before, mask))]


def _op_patch(op):
    """The same for a TF1 op reading a kernel as its second input (MatMul, NHWC Conv2D)."""
    if op.type == "MatMul" and not op.get_attr("transpose_b"):
        return ("dense",)
    if op.type != "Conv2D" or op.get_attr("data_format") != b"NHWC" or op.get_attr("padding") == b"EXPLICIT":
        return None
    kernel = op.inputs[1].shape
    if kernel.rank != 4 or None in kernel.as_list()[:2]:
        return None
    strides, rates = op.get_attr("strides"), op.get_attr("dilations")
    return ("conv", tuple(kernel.as_list()[:2]), tuple(strides[1:3]), tuple(rates[1:3]),
            op.get_attr("padding").decode())


def _variable_behind(tensor):
    """The name of the variable a kernel input reads (through Identity / ReadVariableOp), or None."""
    op = tensor.op
    while op.type in ("Identity", "ReadVariableOp") and op.inputs:
        op = op.inputs[0].op
    return op.name if op.type in ("VariableV2", "Variable", "VarHandleOp") else None


def _patches(x, shape):
    """Rows of X for one batch of a layer's input x."""
    if shape[0] == "dense":
        return tf.reshape(x, (-1, tf.shape(x)[-1]))
    _, size, stride, rate, padding = shape
    if x.shape.rank == 3:  # Conv1D: (batch, steps, channels) as one image row
        x = x[:, None]
    patches = tf.image.extract_patches(x, (1, *size, 1), (1, *stride, 1), (1, *rate, 1), padding)
    return tf.reshape(patches, (-1, tf.shape(patches)[-1]))


def _gram(rows):
    rows = tf.cast(rows, tf.float32)
    return tf.matmul(rows, rows, transpose_a=True), tf.shape(rows)[0]


class TFLitePredictor(Predictor):
    """A .tflite file in TensorFlow's own interpreter (single input, first output; weights read-only)."""

    def __init__(self, path):
        import warnings

        from .tflite import check_tflite

        check_tflite(path)
        load_tensorflow()
        with warnings.catch_warnings():  # tf.lite.Interpreter announces its successor package
            warnings.simplefilter("ignore")
            try:
                self.interpreter = tf.lite.Interpreter(model_path=path)
                self.interpreter.allocate_tensors()
            except (ValueError, RuntimeError) as exc:
                raise WcompressError(f"not a TFLite model TensorFlow can run ({str(exc).splitlines()[0]})",
                                     path) from exc
        details = self.interpreter.get_input_details()
        if len(details) != 1:
            raise WcompressError(f"TFLite models with {len(details)} inputs are not supported", path)
        self._input, self._output = details[0], self.interpreter.get_output_details()[0]
        self.inputs = {self._input["name"]: (tuple(self._input["shape"][1:]), np.dtype(self._input["dtype"]))}

    def run(self, batch):
        (values,) = batch.values()
        if self._input["shape"][0] != len(values):  # the converter fixes the batch at 1: resize to this batch
            self.interpreter.resize_tensor_input(self._input["index"], (len(values), *self._input["shape"][1:]))
            self.interpreter.allocate_tensors()
            self._input = self.interpreter.get_input_details()[0]
            self._output = self.interpreter.get_output_details()[0]
        self.interpreter.set_tensor(self._input["index"], np.asarray(values, dtype=self._input["dtype"]))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output["index"]).copy()


def load_predictor(path, input_names=None, output_name=None, feeds=(), unsafe=False, custom_objects=None,
                   model_code=None):
    """A runnable model from any format that holds one (weights-only files do not)."""
    from . import open_model
    from .container import ContainerStore, restore

    if str(path).endswith(".tflite") and os.path.isfile(path):
        return TFLitePredictor(path)
    store = open_model(path)
    if isinstance(store, ContainerStore):
        work = tempfile.mkdtemp(prefix="wcompress-eval-")
        try:
            written = restore(path, os.path.join(work, "model") + (os.sep if "checkpoint" in store.source_format
                                                                   else _suffix(store.source_name)))
            try:
                return load_predictor(written.path, input_names, output_name, feeds, unsafe, custom_objects,
                                      model_code)
            except WcompressError as exc:  # name the container, not the temporary file it was restored to
                raise WcompressError(str(exc).replace(written.path, path)) from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)
    keras_model = store.format in ("keras", "keras-h5") or (model_code and store.format in _CODE_FORMATS)
    if keras_model and (input_names or output_name or feeds):
        raise WcompressError("--input-tensor/--output-tensor/--feed are for TF graphs, not Keras models", path)
    if model_code and store.format in _CODE_FORMATS:
        return KerasPredictor(model=model_with_weights(model_code, path, store))
    if store.format in ("keras", "keras-h5"):
        return KerasPredictor(path, unsafe=unsafe, custom_objects=custom_objects)
    if store.format == "savedmodel":
        return GraphPredictor(path, "savedmodel", input_names, output_name, feeds)
    if store.format == "tf1-checkpoint" and store.meta:
        return GraphPredictor(path, "tf1", input_names, output_name, feeds, meta=store.meta, prefix=store.prefix)
    if store.format == "tf1-checkpoint":
        raise WcompressError(_TF1_NO_OBJECTS if model_code else "a TF1 checkpoint without its graph (.meta beside it) "
                             "holds weights only, no model to run", path)
    raise WcompressError(f"a {store.format} holds weights only, no model to run: pass --model-code module:function "
                         "(or FILE.py:function), a function returning the Keras model to load them into", path)


# Formats whose weights --model-code loads into the function's model: Keras files through Keras's own
# load_weights (a full model's stored architecture is then not used), TF2 object checkpoints through
# tf.train.Checkpoint. SavedModels and TF1 graphs (.meta) run their own graph; --model-code does not apply.
_CODE_FORMATS = ("keras", "keras-h5", "weights-h5", "keras-weights-h5", "tf2-checkpoint")
_LOAD_WEIGHTS_SUFFIX = {"keras": (".keras",), "keras-h5": (".h5", ".hdf5"), "weights-h5": (".h5", ".hdf5"),
                        "keras-weights-h5": (".weights.h5",)}
_TF1_NO_OBJECTS = ("--model-code cannot load a TF1 checkpoint: it names variables by graph scope, with no object "
                   "graph to match a Keras 3 model's variables against (run it with its .meta graph beside it)")


@functools.lru_cache(maxsize=None)
def _model_function(spec):
    """The function of a --model-code module:function (or FILE.py:function); imported once per process."""
    module, attr = _import_user_code(spec, "--model-code")
    if not attr:
        raise WcompressError("--model-code: name the function, as module:function or FILE.py:function", spec)
    fn = getattr(module, attr, None)
    if fn is None:
        raise WcompressError(f"--model-code: defines no function {attr!r}", spec)
    if not callable(fn):
        raise WcompressError(f"--model-code: {attr} is not a function (a {type(fn).__name__})", spec)
    return fn


def model_from_code(spec):
    """Call the --model-code function (no arguments): a new, built Keras model."""
    load_tensorflow()  # quiet, before Keras imports it
    import keras

    fn = _model_function(spec)
    name = getattr(fn, "__name__", spec.rpartition(":")[2])
    try:
        model = fn()
    except Exception as exc:  # noqa: BLE001 - the user's code failing is reported, in one line
        from ..errors import root_cause

        raise WcompressError(f"--model-code: {name}() failed ({type(exc).__name__}: {root_cause(exc)})",
                             spec) from exc
    if not isinstance(model, keras.Model):
        kind = "None" if model is None else f"a {type(model).__module__}.{type(model).__name__}"
        raise WcompressError(f"--model-code: {name}() returned {kind}, not a Keras model (keras.Model)", spec)
    try:
        inputs = model.inputs
    except AttributeError:
        inputs = None
    if not inputs:
        raise WcompressError(f"--model-code: {name}() returned a model without defined inputs (a subclassed or "
                             "unbuilt model): build it on keras.Input(...)", spec)
    return model


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
    from .tensors import TRAINING_STATE

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

    from .bundle import OBJECT_GRAPH_KEY

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
    from .tensors import TRAINING_STATE

    used = {key for _, key in pairs}
    roles = {info.name: info.role for info in store.tensors}
    left = [path for found in stored.values() for path, key in found
            if key not in used and roles.get(key) not in TRAINING_STATE]
    if left:
        raise WcompressError(f"the checkpoint has {len(left)} variable(s) the model lacks, e.g. {left[0]}")
    return pairs


def _suffix(name):
    for ext in (".weights.h5", ".keras", ".hdf5", ".h5"):
        if name.endswith(ext):
            return ext
    return ""


def load_data(spec):
    """DATA.npz (arrays `x` or named inputs, optional `y`) or module:function returning such a dict."""
    import importlib

    if ":" in spec and not os.path.exists(spec):
        module, _, attr = spec.partition(":")
        try:
            data = getattr(importlib.import_module(module), attr)()
        except (ImportError, AttributeError) as exc:
            raise WcompressError(f"cannot import data loader {spec!r} ({exc})") from exc
    else:
        try:
            with np.load(spec, allow_pickle=False) as archive:
                data = {k: archive[k] for k in archive.files}
        except (OSError, ValueError) as exc:
            raise WcompressError(f"not a readable .npz data file ({str(exc).splitlines()[0]})", spec) from exc
    if not isinstance(data, dict) or not [k for k in data if k != "y"]:
        raise WcompressError("data needs an input array (x, or one per model input) and optionally y", spec)
    return {k: np.asarray(v) for k, v in data.items()}
