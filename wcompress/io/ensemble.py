"""Building one model from several (seed 000's ensemble graph): Keras functional models and TF1 graphs."""

import os

import numpy as np

from ..errors import WcompressError
from .tensors import TRAINING_STATE
from .tf1_meta import load_meta_graph_def
from .tfenv import tf

_NOT_OUTPUTS = ("NoOp", "Const", "Placeholder", "Assign", "SaveV2", "RestoreV2", "VariableV2", "VarHandleOp",
                "AssignVariableOp", "MergeV2Checkpoints", "Identity", "ApplyAdam", "ScalarSummary")
_TRAINING_SCOPES = ("save", "gradients", "Adam", "optimizer", "train", "init", "report_uninitialized")


def build_keras(paths, weights, target, unsafe=False):
    """One functional model: a shared input, each member under its own name, outputs summed with weights
    by standard layers (Rescaling, Add): no Lambda, no custom objects. Saved as .keras at `target`."""
    import keras

    from .predict import load_keras_model

    models = [load_keras_model(path, unsafe) for path in paths]
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
    keras.Model(inputs, outputs, name="ensemble").save(target)
    return target


def tf1_candidates(meta, kind):
    """Placeholders (kind='input') or leaf tensors (kind='output') a user may mean, by name."""
    graph = meta.graph_def
    if kind == "input":
        return [f"{n.name}:0" for n in graph.node if n.op == "Placeholder"]
    consumed = {i.lstrip("^").split(":")[0] for n in graph.node for i in n.input}
    return [f"{n.name}:0" for n in graph.node if n.name not in consumed and n.op not in _NOT_OUTPUTS
            and not n.name.split("/")[0] in _TRAINING_SCOPES]


def _resolve(name, metas, paths, kind):
    if name is None:
        found = tf1_candidates(metas[0], kind)
        if len(found) == 1:
            return found[0]
        listed = ", ".join(found[:12]) + (" …" if len(found) > 12 else "")
        raise WcompressError(f"name the {kind} tensor with --{kind}; candidates: {listed}", paths[0])
    name = name if ":" in name else name + ":0"
    for meta, path in zip(metas, paths):
        if name.split(":")[0] not in {n.name for n in meta.graph_def.node}:
            raise WcompressError(f"graph has no tensor {name}; candidates: "
                                 f"{', '.join(tf1_candidates(meta, kind)[:12])}", path)
    return name


def _placeholder(meta, name):
    node = next(n for n in meta.graph_def.node if n.name == name.split(":")[0])
    if node.op != "Placeholder":
        raise WcompressError(f"{name} is a {node.op}, not a placeholder")
    shape = tf.TensorShape(node.attr["shape"].shape) if "shape" in node.attr else tf.TensorShape(None)
    return tf.as_dtype(node.attr["dtype"].type), shape


def build_tf1(stores, weights, target_prefix, input_name=None, output_name=None, feeds=()):
    """One graph: each member imported under `model{i}/`, fed by one shared placeholder `input`, with a
    weighted-sum output `output` and a Saver over every member's model variables; checkpoint written."""
    from .bundle import write_bundle

    paths = [s.path for s in stores]
    for store in stores:
        if store.format != "tf1-checkpoint" or not store.meta:
            raise WcompressError("merge of TF graphs needs TF1 checkpoints with their .meta", store.path)
    metas = [load_meta_graph_def(s.meta) for s in stores]
    input_name = _resolve(input_name, metas, paths, "input")
    output_name = _resolve(output_name, metas, paths, "output")
    signature = [_placeholder(m, input_name) for m in metas]
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
            dtype, _ = _placeholder(metas[0], name)
            input_map[name] = tf.constant(_parse_value(text, dtype), dtype=dtype, name="fed/" + name.split(":")[0])
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
        tf.compat.v1.train.export_meta_graph(filename=target_prefix + ".meta", graph=graph,
                                             saver_def=saver.as_saver_def())
    write_bundle(target_prefix, ((f"model{i}/{t.name}", s.load(t.name)) for i, s in enumerate(stores)
                                 for t in s.tensors if t.role not in TRAINING_STATE))
    with open(os.path.join(os.path.dirname(target_prefix), "checkpoint"), "w") as fh:
        fh.write(f'model_checkpoint_path: "{os.path.basename(target_prefix)}"\n')
    return {"input_tensor": "input:0", "output_tensor": "output:0", "member_input": input_name,
            "member_output": output_name}


def _parse_value(text, dtype):
    if dtype == tf.bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise WcompressError(f"--feed value {text!r} is not a boolean")
        return text.lower() in ("true", "1")
    try:
        return np.array(float(text)).astype(dtype.as_numpy_dtype)
    except ValueError as exc:
        raise WcompressError(f"--feed value {text!r} is not a number") from exc
