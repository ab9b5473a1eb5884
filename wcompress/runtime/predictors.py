"""Running a model on data: Keras files, SavedModel signatures, TF1 MetaGraphs (+ checkpoint), TFLite files,
and containers of any of them; each as a Predictor that can also overwrite its own weights in memory."""

import os
import shutil
import tempfile
import warnings

import numpy as np

from wcompress.errors import WcompressError, WcompressWarning
from wcompress.formats.outputs import keras_suffix
from wcompress.formats.tfenv import load as load_tensorflow
from wcompress.formats.tfenv import tf
from wcompress.progress import batch_progress
from wcompress.runtime.activations import (
    KERNEL_ATTRS, gram, is_recurrent, kernel_patch, layer_grams, layer_inputs, op_patch, recurrent_grams, rows_of,
    sequence_copy, variable_behind)
from wcompress.runtime.keras_models import load_keras_model, model_with_weights


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

    def kernel_keys(self):
        """The handle keys of the kernels kernel_input_hessians measures, inputs before outputs."""
        return []

    def kernel_input_hessians(self, data, batch_size=16, show_progress=False, keys=None):
        """{handle key: X^T X / n} of the inputs of each kernel a product reads (io/capture.py); only the
        kernels in `keys` where given (running only the part of the model they need)."""
        return {}

    def output_fisher(self, data, batch_size=16, show_progress=False):
        """({handle key: E over examples of (d(v . f)/dW)^2, W's shape}, the outputs' summed variance) for the
        model's float kernels (rank >= 2; a Keras model's float vectors too), f its output and v a standard
        normal probe per output: how far the output moves with each weight (ecq's allocation,
        quantization.ecq_units). ({}, 0.0) where the model cannot be differentiated."""
        return {}, 0.0

    def batch_norms(self):
        """[(scale, offset, mean, variance handle keys, epsilon)] of each batch normalization the model runs as
        (x - mean) / sqrt(variance + epsilon) x scale + offset at inference, each with four variables of its own
        (capture.fold_batch_norms); [] where unsupported."""
        return []

    def output_error_gradients(self, handles):
        """A function (feeds {input: rows}, reference outputs) -> [d mean((f - reference)^2) / d W] for the
        variables `handles` (None where the output does not depend on one), f the model's output: what
        fitting.fit_vectors descends. Raises NotImplementedError where the model cannot be differentiated."""
        raise NotImplementedError

    def _batches(self, data, batch_size, show_progress, label):
        """(index, {input: its rows}) for each batch of the data in order, the progress bar advanced after each."""
        feeds = self.match(data)
        n = next(iter(feeds.values())).shape[0]
        with batch_progress(n, enabled=show_progress, label=label) as advance:
            for index, start in enumerate(range(0, n, batch_size)):
                yield index, {k: v[start:start + batch_size] for k, v in feeds.items()}
                advance(min(batch_size, n - start))

    def _accumulate_fisher(self, step, data, batch_size, show_progress):
        """Run step(batch, seed) -> ({key: d(v . f)/dW}, f) over the data; squares and output moments summed
        in float64. The probe v is drawn from `seed` (the batch's index): the same data gives the same figures."""
        sums, first, second, n = {}, 0.0, 0.0, 0
        for index, batch in self._batches(data, batch_size, show_progress, "measuring sensitivity"):
            grads, out = step(batch, index)
            for key, grad in grads.items():
                sums[key] = sums.get(key, 0) + np.square(np.asarray(grad, dtype=np.float64))
            out = np.asarray(out, dtype=np.float64).reshape(len(out), -1)
            first, second, n = first + out.sum(axis=0), second + (out * out).sum(axis=0), n + len(out)
        variance = float(np.sum(second / n - (first / n) ** 2)) if n else 0.0
        return {key: total / n for key, total in sums.items()}, max(variance, 0.0)

    def _accumulate(self, step, data, batch_size, show_progress):
        """Run step(batch) -> {key: (X^T X, rows)} over the data; the mean per key, in float64."""
        sums, rows = {}, {}
        for _, batch in self._batches(data, batch_size, show_progress, "calibrating"):
            for key, (product, count) in step(batch).items():
                sums[key] = sums.get(key, 0) + np.asarray(product, dtype=np.float64)
                rows[key] = rows.get(key, 0) + int(count)
        return {key: sums[key] / max(1, rows[key]) for key in sums}

    def predict(self, data, batch_size=256, show_progress=False):
        outputs = [np.asarray(self.run(batch)) for _, batch in self._batches(data, batch_size, show_progress,
                                                                              "predicting")]
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


BATCH_NORM_ATTRS = ("gamma", "beta", "moving_mean", "moving_variance")
FUSED_BATCH_NORMS = {"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"}


def _unshared(groups):
    """The batch norms whose four variables are distinct and read by no other batch norm: only those fold."""
    from collections import Counter

    uses = Counter(key for *keys, _ in groups for key in keys)
    return [g for g in groups if len(set(g[:4])) == 4 and all(uses[key] == 1 for key in g[:4])]


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
        out = self._call(self._structured(values))
        if isinstance(out, (list, tuple)):
            out = out[0]
        return np.asarray(out)

    def _structured(self, values):
        """The inputs as the model was built to take them: a list where its inputs are a list (a Keras 2 file's
        are, even of one), else one tensor or a list; otherwise Keras warns at every call."""
        if isinstance(getattr(self.model, "_inputs_struct", None), (list, tuple)):
            return list(values)
        return values if len(values) > 1 else values[0]

    def weights(self):
        return [(i, np.asarray(v.numpy())) for i, v in enumerate(self.model.weights)]

    def assign(self, handle, array):
        self.model.weights[handle].assign(array)

    def _calibration_targets(self):
        """[(layer, its kernels' handles, patch shape, the input tensors its capture needs)], in layer order."""
        index = {id(v): i for i, v in enumerate(self.model.weights)}
        targets = []
        for layer in self.model.layers:  # nested models' layers have no input in this model's graph
            owner = layer.cell if is_recurrent(layer) else layer
            kernels = [index.get(id(getattr(owner, a, None))) for a in KERNEL_ATTRS.get(type(layer).__name__, ())]
            shape = kernel_patch(layer)
            if shape is None or None in kernels or not kernels:
                continue
            try:
                inputs = layer_inputs(layer, shape)
            except (AttributeError, ValueError):  # a layer called more than once has no single input
                continue
            if inputs:
                targets.append((layer, kernels, shape, inputs))
        return targets

    def kernel_keys(self):
        return [key for _, kernels, _, _ in self._calibration_targets() for key in kernels]

    def batch_norms(self):
        index = {id(v): i for i, v in enumerate(self.model.weights)}
        found = []
        for layer in self.model._flatten_layers(include_self=False, recursive=True):
            if type(layer).__name__ != "BatchNormalization" or getattr(layer, "renorm", False) \
                    or not (getattr(layer, "scale", False) and getattr(layer, "center", False)):
                continue
            handles = [index.get(id(getattr(layer, a, None))) for a in BATCH_NORM_ATTRS]
            if None not in handles:
                found.append((*handles, float(layer.epsilon)))
        return _unshared(found)

    def kernel_input_hessians(self, data, batch_size=16, show_progress=False, keys=None):
        import keras

        keys = None if keys is None else set(keys)
        targets = [t for t in self._calibration_targets() if keys is None or keys.intersection(t[1])]
        if not targets:
            return {}
        probe = keras.Model(self.model.inputs, [t for *_, inputs in targets for t in inputs])
        sequences = {id(layer): sequence_copy(layer) for layer, _, shape, _ in targets if shape[0] == "recurrent"}

        @tf.function(reduce_retracing=True)
        def grams(x):
            outs = probe(x, training=False)
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
            result = []
            for layer, _, shape, inputs in targets:
                seen, outs = outs[:len(inputs)], outs[len(inputs):]
                result.append(recurrent_grams(layer, sequences[id(layer)], *seen) if shape[0] == "recurrent"
                              else layer_grams(layer, shape, seen[0]))
            return result

        def step(batch):
            values = [batch[t.name] for t in self.model.inputs]
            result = grams(values)  # the probe's inputs are a list
            return {key: (g.numpy(), c.numpy()) for (_, kernels, _, _), pairs in zip(targets, result)
                    for key, (g, c) in zip(kernels, pairs) if keys is None or key in keys}

        return self._accumulate(step, data, batch_size, show_progress)

    def output_error_gradients(self, handles):
        variables = [getattr(v, "value", v) for v in (self.model.weights[h] for h in handles)]
        model = self.model

        @tf.function(reduce_retracing=True)
        def gradients(values, reference):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(variables)
                out = model(values, training=False)
                out = tf.cast(out[0] if isinstance(out, (list, tuple)) else out, tf.float32)
                loss = tf.reduce_mean(tf.square(out - reference))
            return tape.gradient(loss, variables)

        def step(feeds, reference):
            values = [feeds[t.name] for t in self.model.inputs]
            grads = gradients(self._structured(values), np.asarray(reference, np.float32))
            return [None if g is None else tf.convert_to_tensor(g).numpy() for g in grads]

        return step

    def output_fisher(self, data, batch_size=16, show_progress=False):
        # Kernels, and the float vectors (biases, batch norms, their moving statistics too) ecq also quantizes.
        kernels = [(i, v) for i, v in enumerate(self.model.weights)
                   if len(v.shape) >= 1 and np.dtype(v.dtype).kind == "f"]
        if not kernels:
            return {}, 0.0
        variables = [getattr(v, "value", v) for _, v in kernels]  # Keras 3 wraps a tf.Variable

        def step(batch, seed):
            values = [batch[t.name] for t in self.model.inputs]
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(variables)
                out = self.model(self._structured(values), training=False)
                out = tf.cast(out[0] if isinstance(out, (list, tuple)) else out, tf.float32)
                probe = tf.random.stateless_normal(tf.shape(out), seed=(seed, 0))
                total = tf.reduce_sum(out * probe)
            grads = tape.gradient(total, variables)
            return {i: g.numpy() for (i, _), g in zip(kernels, grads) if g is not None}, out.numpy()

        return self._accumulate_fisher(step, data, batch_size, show_progress)


class GraphPredictor(Predictor):
    """A TF1 graph in its own session: a MetaGraph + checkpoint, or a SavedModel via the stock v1 loader."""

    def __init__(self, path, kind, input_names=None, output_name=None, feeds=(), meta=None, prefix=None):
        from wcompress.runtime.graphs import flag_feeds, infer_input, infer_output, parse_value
        from wcompress.formats.tf1_meta import load_meta_graph_def

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
                self.fixed[tensor] = parse_value(text, tensor.dtype)
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

    def _kernel_reads(self):
        """[(variable name, op, patch shape)] of each product op reading a kernel variable, in graph order."""
        reads = []
        for op in self.graph.get_operations():
            shape = op_patch(op)
            variable = variable_behind(op.inputs[1]) if shape is not None else None
            if variable is not None:
                reads.append((variable, op, shape))
        return reads

    def kernel_keys(self):
        return list(dict.fromkeys(variable for variable, _, _ in self._kernel_reads()))

    def batch_norms(self):
        found = []
        for op in self.graph.get_operations():
            if op.type in FUSED_BATCH_NORMS and not op.get_attr("is_training"):
                # tf.layers' batch norm reads its variables through the Switch of its is-training cond
                names = [variable_behind(t, through=("Switch",)) for t in op.inputs[1:5]]
                if None not in names:
                    found.append((*names, float(op.get_attr("epsilon"))))
        return _unshared(found)

    def kernel_input_hessians(self, data, batch_size=16, show_progress=False, keys=None):
        fetches = {}
        keys = None if keys is None else set(keys)
        reads = [(v, op, shape) for v, op, shape in self._kernel_reads() if keys is None or v in keys]
        with self.graph.as_default(), tf.name_scope("wcompress_capture"):
            for variable, op, shape in reads:
                x = op.inputs[0]
                if op.type == "MatMul" and op.get_attr("transpose_a"):
                    x = tf.transpose(x)
                fetches.setdefault(variable, []).append(gram(rows_of(x, shape)))
        if not fetches:
            return {}

        def step(batch):
            values = self.session.run(fetches, {**self.fixed, **batch})
            return {key: (sum(g for g, _ in parts), sum(c for _, c in parts)) for key, parts in values.items()}

        return self._accumulate(step, data, batch_size, show_progress)

    def output_error_gradients(self, handles):
        if not self.output.dtype.is_floating:
            raise NotImplementedError
        with self.graph.as_default(), tf.name_scope("wcompress_fitting"):
            reference = tf.compat.v1.placeholder(tf.float32, name="reference")
            loss = tf.reduce_mean(tf.square(tf.cast(self.output, tf.float32) - reference))
            try:
                grads = tf.gradients(loss, list(handles))
            except LookupError as exc:  # an op on the way has no gradient
                raise NotImplementedError from exc
        fetches = [tf.convert_to_tensor(g) for g in grads if g is not None]  # IndexedSlices made dense

        def step(feeds, target):
            values = iter(self.session.run(fetches, {**self.fixed, **feeds, reference: target}) if fetches else [])
            return [None if g is None else np.asarray(next(values)) for g in grads]

        return step

    def output_fisher(self, data, batch_size=16, show_progress=False):
        reads = {}
        for op in self.graph.get_operations():
            if op_patch(op) is not None:
                variable = variable_behind(op.inputs[1])
                if variable is not None:
                    reads.setdefault(variable, []).append(op.inputs[1])
        if not reads or not self.output.dtype.is_floating:
            return {}, 0.0
        with self.graph.as_default(), tf.name_scope("wcompress_sensitivity"):
            seed = tf.compat.v1.placeholder(tf.int64, (), name="seed")
            out = tf.cast(self.output, tf.float32)
            total = tf.reduce_sum(out * tf.random.stateless_normal(tf.shape(out), seed=tf.stack([seed, 0])))
            try:
                grads = tf.gradients(total, [t for ts in reads.values() for t in ts])
            except LookupError:  # an op on the way has no gradient: the steps come from H instead
                return {}, 0.0
        fetches, position = {}, 0
        for variable, tensors in reads.items():
            parts = [g for g in grads[position:position + len(tensors)] if g is not None]
            position += len(tensors)
            if parts:
                fetches[variable] = tf.add_n(parts) if len(parts) > 1 else parts[0]

        def step(batch, index):
            return self.session.run((fetches, out), {**self.fixed, **batch, seed: index})

        return self._accumulate_fisher(step, data, batch_size, show_progress)

    def close(self):
        self.session.close()


# --- calibration: a kernel's inputs as rows of X, so that the product is X @ kernel.reshape(-1, out) ------


class TFLitePredictor(Predictor):
    """A .tflite file in TensorFlow's own interpreter (single input, first output; weights read-only)."""

    def __init__(self, path):
        import warnings

        from wcompress.formats.tflite import check_tflite

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
    from wcompress.formats import open_model
    from wcompress.formats.container import ContainerStore, restore

    if str(path).endswith(".tflite") and os.path.isfile(path):
        return TFLitePredictor(path)
    store = open_model(path)
    if isinstance(store, ContainerStore):
        work = tempfile.mkdtemp(prefix="wcompress-eval-")
        try:
            with warnings.catch_warnings():  # the model as the container restores it is what is scored
                warnings.filterwarnings("ignore", message=".*(tensors were|tensor was) stored as",
                                        category=WcompressWarning)
                written = restore(path, os.path.join(work, "model") + (
                    os.sep if "checkpoint" in store.source_format else keras_suffix(store.source_name)))
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
_TF1_NO_OBJECTS = ("--model-code cannot load a TF1 checkpoint: it names variables by graph scope, with no object "
                   "graph to match a Keras 3 model's variables against (run it with its .meta graph beside it)")


