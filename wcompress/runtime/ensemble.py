"""Building one model from several (seed 000's ensemble graph): Keras functional models and TF1 graphs."""

import os
import numpy as np

from wcompress.errors import WcompressError
from wcompress.formats.keras_h5 import save_keras
from wcompress.formats.tensors import TRAINING_STATE
from wcompress.formats.tf1_meta import load_meta_graph_def, serialize_meta_graph
from wcompress.formats.tfenv import load as load_tensorflow
from wcompress.formats.tfenv import tf
from wcompress.runtime.graphs import flag_feeds, infer_input, infer_output, parse_value, placeholder, resolve_tensor


def build_keras(paths, weights, target, unsafe=False, custom_objects=None):
    """One functional model: a shared input, each member under its own name, outputs summed with weights
    by standard layers (Rescaling, Add): no Lambda, no custom objects. Saved as .keras at `target`."""
    load_tensorflow()  # quiet, before Keras imports it
    import keras

    from wcompress.runtime.keras_models import load_keras_model

    models = [load_keras_model(path, unsafe, custom_objects) for path in paths]
    shapes = [(tuple(m.inputs[0].shape[1:]), tuple(m.outputs[0].shape[1:])) for m in models]
    for path, m, shape in zip(paths, models, shapes):
        if len(m.inputs) != 1 or len(m.outputs) != 1:
            raise WcompressError("merge takes models with one input and one output", path)
        if shape != shapes[0]:
            raise WcompressError(f"input/output shapes {shape} differ from {shapes[0]} of {paths[0]}", path)
    inputs = keras.Input(shape=shapes[0][0], dtype=models[0].inputs[0].dtype, name="input")
    scaled = []
    for i, (model, weight) in enumerate(zip(models, weights)):
        member = keras.Model(model.inputs[0], model.outputs[0], name=f"model{i}")  # own name prefix
        scaled.append(keras.layers.Rescaling(float(weight), name=f"weight{i}")(member(inputs)))
    outputs = keras.layers.Add(name="weighted_sum")(scaled)
    save_keras(keras.Model(inputs, outputs, name="ensemble"), target)
    return target


def build_tf1(stores, weights, target_prefix, input_name=None, output_name=None, feeds=()):
    """One graph: each member imported under `model{i}/`, fed by one shared placeholder `input`, with a
    weighted-sum output `output` and a Saver over every member's model variables; checkpoint written."""
    from wcompress.formats.bundle import write_bundle

    paths = [s.path for s in stores]
    for store in stores:
        if store.format != "tf1-checkpoint" or not store.meta:
            raise WcompressError("merge of TF graphs needs TF1 checkpoints with their .meta", store.path)
    metas = [load_meta_graph_def(s.meta) for s in stores]
    output_name = resolve_tensor(output_name, metas, paths, "output") if output_name else infer_output(metas, paths)
    input_name = (resolve_tensor(input_name, metas, paths, "input") if input_name
                  else infer_input(metas[0], output_name, paths[0]))
    implied = flag_feeds(metas[0], output_name, [input_name], feeds, paths[0])
    feeds = tuple(feeds) + tuple(implied)
    signature = [placeholder(m, input_name) for m in metas]
    for path, sig in zip(paths, signature):
        if sig[0] != signature[0][0] or sig[1].as_list() != signature[0][1].as_list():
            raise WcompressError(f"input {input_name} is {sig[0].name}{sig[1]}, but {signature[0][0].name}"
                                 f"{signature[0][1]} in {paths[0]}", path)
    graph = tf.Graph()
    with graph.as_default():
        shared = tf.compat.v1.placeholder(signature[0][0], signature[0][1], name="input")
        input_map = {input_name: shared}
        for spec in feeds:
            name, _, text = spec.partition("=")
            name = name if ":" in name else name + ":0"
            dtype, _ = placeholder(metas[0], name)
            input_map[name] = tf.constant(parse_value(text, dtype), dtype=dtype, name="fed/" + name.split(":")[0])
        outputs = []
        for i, meta in enumerate(metas):
            tf.compat.v1.train.import_meta_graph(meta, import_scope=f"model{i}", input_map=input_map)
            outputs.append(graph.get_tensor_by_name(f"model{i}/{output_name}"))
        tf.identity(tf.add_n([tf.cast(w, out.dtype) * out for w, out in zip(weights, outputs)]), name="output")
        keys = [f"model{i}/{t.name}" for i, s in enumerate(stores) for t in s.tensors if t.role not in TRAINING_STATE]
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
        missing = [k for k in keys if k not in variables]
        if missing:
            raise WcompressError(f"checkpoint tensors missing from the graph: {', '.join(missing[:5])}")
        saver = tf.compat.v1.train.Saver(var_list={k: variables[k] for k in keys}, name="ensemble_saver")
        meta = tf.compat.v1.train.export_meta_graph(graph=graph, saver_def=saver.as_saver_def())
        with open(target_prefix + ".meta", "wb") as fh:
            fh.write(serialize_meta_graph(meta))
    write_bundle(target_prefix, ((f"model{i}/{t.name}", s.load(t.name)) for i, s in enumerate(stores)
                                 for t in s.tensors if t.role not in TRAINING_STATE))
    with open(os.path.join(os.path.dirname(target_prefix), "checkpoint"), "w") as fh:
        fh.write(f'model_checkpoint_path: "{os.path.basename(target_prefix)}"\n')
    return {"input_tensor": "input:0", "output_tensor": "output:0", "member_input": input_name,
            "member_output": output_name, "implied_feeds": implied}


def smoke_run(path, fmt, unsafe=False, custom_objects=None):
    """Run a written model once on a batch of zeros; a model that cannot run is an error, in one line."""
    from wcompress.errors import root_cause

    if fmt not in ("keras", "keras-h5", "tf1-checkpoint"):
        return  # weights only: nothing to run
    try:
        if fmt in ("keras", "keras-h5"):
            from wcompress.runtime.keras_models import load_keras_model

            model = load_keras_model(path, unsafe, custom_objects)
            shape = [1] + [d or 1 for d in model.inputs[0].shape[1:]]
            model(np.zeros(shape, dtype=model.inputs[0].dtype), training=False)
            return
        meta = load_meta_graph_def(path + ".meta")
        graph = tf.Graph()
        with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
            tf.compat.v1.train.import_meta_graph(meta).restore(session, path)
            inputs = graph.get_tensor_by_name("input:0")
            shape = [1] + [d or 1 for d in (inputs.shape.as_list()[1:] if inputs.shape.rank else [])]
            session.run("output:0", {inputs: np.zeros(shape, inputs.dtype.as_numpy_dtype)})
    except WcompressError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever stops the model from running is the message
        raise WcompressError(f"the merged model does not run on a batch of zeros: {root_cause(exc)}") from exc


