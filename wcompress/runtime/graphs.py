"""Reading a TF1 graph as a model: its output (the inference graph's leaf that needs every weight), its
input placeholder, the is-training flags to feed, and --feed values."""

import re

import numpy as np

from wcompress.errors import WcompressError
from wcompress.formats.tfenv import tf

_VARIABLE_OPS = ("VariableV2", "VarHandleOp", "Variable")


# Leaves that are never a model's output (an unconsumed Identity often is: tf.identity(y, name="output")).
_NOT_OUTPUTS = ("NoOp", "Const", "Placeholder", "Assign", "SaveV2", "RestoreV2", "VariableV2", "VarHandleOp",
                "AssignVariableOp", "MergeV2Checkpoints", "ApplyAdam", "ScalarSummary", "VarIsInitializedOp",
                "IsVariableInitialized")


_TRAINING_SCOPES = ("save", "gradients", "Adam", "optimizer", "train", "init", "report_uninitialized")


# Scopes, at any depth, of losses and metrics: a loss's label-free half (log1p(exp(-|logits|))) looks
# like an output.
_LOSS_SCOPE = re.compile(r"(^|_)(loss|losses|metrics?|xentropy|cross_entropy)$", re.IGNORECASE)


def _outside_training(name):
    scopes = name.split("/")
    return scopes[0] not in _TRAINING_SCOPES and not any(_LOSS_SCOPE.search(s) for s in scopes[:-1])


def tf1_candidates(meta, kind):
    """Placeholders (kind='input') or leaf tensors (kind='output') a user may mean, by name."""
    graph = meta.graph_def
    if kind == "input":
        return [f"{n.name}:0" for n in graph.node if n.op == "Placeholder"]
    consumed = {i.lstrip("^").split(":")[0] for n in graph.node for i in n.input}
    return [f"{n.name}:0" for n in graph.node if n.name not in consumed and n.op not in _NOT_OUTPUTS
            and _outside_training(n.name)]


def _ancestors(graph_def, tensor_name):
    """Every node a tensor depends on (data and control inputs), by name."""
    inputs = {n.name: [i.lstrip("^").split(":")[0] for i in n.input] for n in graph_def.node}
    seen, stack = set(), [tensor_name.split(":")[0]]
    while stack:
        node = stack.pop()
        if node not in seen and node in inputs:
            seen.add(node)
            stack.extend(inputs[node])
    return seen


def _is_float(node):
    """Whether the node's first output is floating point (Shape's `T` is its input's type: out_type first)."""
    dtype = next((node.attr[key].type for key in ("out_type", "DstT", "dtype", "T") if key in node.attr), 0)
    return dtype != 0 and tf.as_dtype(dtype).is_floating


def _dependencies(graph_def):
    """For each node, the float placeholders and the variables it depends on (data and control inputs),
    in one pass over the graph; a loop's back edge adds nothing."""
    nodes = {n.name: n for n in graph_def.node}
    inputs = {name: [i.lstrip("^").split(":")[0] for i in n.input] for name, n in nodes.items()}
    placeholders, variables, interned = {}, {}, {}
    for root in nodes:
        stack, visiting = [(root, False)], set()
        while stack:
            name, inputs_done = stack.pop()
            if inputs_done:
                visiting.discard(name)
                node, own_placeholders, own_variables = nodes[name], set(), set()
                if node.op == "Placeholder" and _is_float(node):
                    own_placeholders.add(name)
                if node.op in _VARIABLE_OPS:
                    own_variables.add(name)
                for i in inputs[name]:
                    own_placeholders |= placeholders.get(i, ())
                    own_variables |= variables.get(i, ())
                # Nodes along a chain share their sets: keep one copy of each.
                placeholders[name] = interned.setdefault(frozenset(own_placeholders), frozenset(own_placeholders))
                variables[name] = interned.setdefault(frozenset(own_variables), frozenset(own_variables))
            elif name not in placeholders and name not in visiting:
                visiting.add(name)
                stack.append((name, True))
                stack.extend((i, False) for i in inputs[name] if i in nodes and i not in placeholders
                             and i not in visiting)
    return placeholders, variables


def model_outputs(meta):
    """The inference graph's outputs: float tensors outside training scopes that depend on exactly one
    float placeholder (a loss also needs the labels) and on some variable, and that no other such
    tensor consumes. {tensor name: the variables it depends on}."""
    graph = meta.graph_def
    placeholders, variables = _dependencies(graph)
    inference = {n.name for n in graph.node if n.op not in _NOT_OUTPUTS and _is_float(n)
                 and _outside_training(n.name)
                 and len(placeholders[n.name]) == 1 and variables[n.name]}
    consumed = {i.lstrip("^").split(":")[0] for n in graph.node if n.name in inference for i in n.input}
    return {f"{name}:0": variables[name] for name in inference if name not in consumed}


def infer_output(metas, paths):
    """The members' shared model output: among the inference graph's outputs every member has, the one
    that depends on every variable any other depends on (the others, such as batch-norm statistics,
    read a prefix of the network). Two heads on their own weights are ambiguous: name one."""
    found = [model_outputs(m) for m in metas]
    shared = sorted(set.intersection(*(set(f) for f in found)), key=lambda n: (-len(found[0][n]), n))
    if shared and all(found_i[n] < found_i[shared[0]] for found_i in found for n in shared[1:]):
        return shared[0]
    listed = ", ".join(shared[:12]) or ", ".join(
        n for n in tf1_candidates(metas[0], "output") if _is_float(_node(metas[0], n)))[:600] or "none"
    raise WcompressError(f"name the output tensor with --output-tensor; candidates: {listed}", paths[0])


def _node(meta, tensor_name):
    return next(n for n in meta.graph_def.node if n.name == tensor_name.split(":")[0])


def infer_input(meta, output_name, path):
    """The only float placeholder the output depends on."""
    nodes = {n.name: n for n in meta.graph_def.node}
    found = sorted(f"{a}:0" for a in _ancestors(meta.graph_def, output_name)
                   if nodes[a].op == "Placeholder" and _is_float(nodes[a]))
    if len(found) != 1:
        raise WcompressError(f"name the input tensor with --input-tensor (and fix the others with --feed "
                             f"NAME=VALUE); {output_name} depends on {', '.join(found) or 'no float placeholder'}",
                             path)
    return found[0]


def flag_feeds(meta, output_name, input_names, feeds, path):
    """Placeholders besides the inputs that the output needs: a bool one (an is-training flag) is fed
    False, as inference does; any other must be given with --feed."""
    def tensor(name):
        return name if ":" in name else name + ":0"

    given = {tensor(spec.partition("=")[0]) for spec in feeds} | {tensor(n) for n in input_names}
    nodes = {n.name: n for n in meta.graph_def.node}
    needed = sorted(f"{a}:0" for a in _ancestors(meta.graph_def, output_name)
                    if nodes[a].op == "Placeholder" and f"{a}:0" not in given)
    added, missing = [], []
    for name in needed:
        if tf.as_dtype(nodes[name[:-2]].attr["dtype"].type) == tf.bool:
            added.append(f"{name}=false")
        else:
            missing.append(f"{name} ({tf.as_dtype(nodes[name[:-2]].attr['dtype'].type).name})")
    if missing:
        fixes = " ".join(f"--feed {m.split()[0]}=VALUE" for m in missing)
        raise WcompressError(f"the output {output_name} also needs {', '.join(missing)}: pass {fixes}", path)
    return added


def resolve_tensor(name, metas, paths, kind):
    name = name if ":" in name else name + ":0"
    for meta, path in zip(metas, paths):
        if name.split(":")[0] not in {n.name for n in meta.graph_def.node}:
            raise WcompressError(f"graph has no tensor {name}; candidates: "
                                 f"{', '.join(tf1_candidates(meta, kind)[:12])}", path)
    return name


def placeholder(meta, name):
    node = next(n for n in meta.graph_def.node if n.name == name.split(":")[0])
    if node.op != "Placeholder":
        raise WcompressError(f"{name} is a {node.op}, not a placeholder")
    shape = tf.TensorShape(node.attr["shape"].shape) if "shape" in node.attr else tf.TensorShape(None)
    return tf.as_dtype(node.attr["dtype"].type), shape


def parse_value(text, dtype):
    if dtype == tf.bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise WcompressError(f"--feed value {text!r} is not a boolean")
        return text.lower() in ("true", "1")
    try:
        return np.array(float(text)).astype(dtype.as_numpy_dtype)
    except ValueError as exc:
        raise WcompressError(f"--feed value {text!r} is not a number") from exc
