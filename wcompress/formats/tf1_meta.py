"""TF1 MetaGraphs (`.meta`) and SavedModel graphs: variable order, and keeping their savers in step
with a checkpoint whose tensors were dropped."""

import numpy as np

from wcompress.formats.tfenv import submodule, tf

_VARIABLE_OPS = {"VariableV2", "Variable", "VarHandleOp"}


def load_meta_graph_def(path):
    """Parse a .meta; drop `_output_shapes`, which old graphs carry and TF 2.21 refuses to import."""
    meta_graph_pb2 = submodule("core.protobuf.meta_graph_pb2")

    meta = meta_graph_pb2.MetaGraphDef()
    with open(path, "rb") as fh:
        meta.ParseFromString(fh.read())
    for node in meta.graph_def.node:
        if "_output_shapes" in node.attr:
            del node.attr["_output_shapes"]
    return meta


def variable_names(path):
    """Variable names in graph order: the order the model's author created them."""
    meta = load_meta_graph_def(path)
    return [n.name for n in meta.graph_def.node if n.op in _VARIABLE_OPS]


def rewrite(meta_in, meta_out, kept, retyped, scales=None):
    """Write a .meta whose Saver saves and restores exactly the `kept` variables, with the variables
    in `retyped` (name -> numpy dtype) stored in that dtype and cast back where the graph reads them
    (and multiplied by their per-channel `scales`, name -> float32 array, where given: quantized)."""
    meta = rewrite_meta_graph(load_meta_graph_def(meta_in), kept, retyped, meta_in, scales)
    with open(meta_out, "wb") as fh:
        fh.write(serialize_meta_graph(meta))


# Collections whose entries TensorFlow stores as protos it serialized itself: their maps (a control-flow
# context's external values) come out in the order of a Python dict filled from a set of strings, which
# changes from one process to the next (string hashing is seeded per process).
_SERIALIZED_COLLECTIONS = {"cond_context": "CondContextDef", "while_context": "WhileContextDef"}


def serialize_meta_graph(meta):
    """A MetaGraphDef's bytes, the same in every process: maps in key order, nested protos included."""
    canonical_collections(meta)
    return meta.SerializeToString(deterministic=True)


def canonical_collections(meta):
    """Re-serialize the protos stored as bytes inside `meta`'s collections with their maps in key order."""
    control_flow_pb2 = submodule("core.protobuf.control_flow_pb2")
    for key, kind in _SERIALIZED_COLLECTIONS.items():
        if key not in meta.collection_def or not meta.collection_def[key].HasField("bytes_list"):
            continue
        values = meta.collection_def[key].bytes_list.value
        for n, data in enumerate(values):
            message = getattr(control_flow_pb2, kind)()
            message.ParseFromString(data)
            values[n] = message.SerializeToString(deterministic=True)


def rewrite_meta_graph(meta, kept, retyped, path, scales=None):
    """The MetaGraphDef `rewrite` writes: the graph retyped, and a new Saver over the `kept` variables."""
    if retyped:
        _retype_variables(meta, retyped, path, scales or {})
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.train.import_meta_graph(meta, clear_devices=False)
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
        saver = tf.compat.v1.train.Saver(
            var_list={name: variables[name] for name in kept if name in variables}, name="wcompress_saver"
        )
        return tf.compat.v1.train.export_meta_graph(graph=graph, saver_def=saver.as_saver_def())


def update_savedmodel_restore(pb_path, dropped=(), retyped=None):
    """Keep a SavedModel's graphs in step with its variables bundle.

    TF1 SavedModels (a graph-mode Saver) get the .meta treatment: the graph is retyped and a new
    Saver over the kept variables replaces the old one. TF2 SavedModels restore through a function
    holding a RestoreV2 whose outputs feed Identity → AssignVariableOp pairs: dropped keys lose their
    entry and that pair; retyped keys (stored float16) become float16 variables everywhere — in the
    object graph `tf.saved_model.load` builds them from, in the graph the TF1 loader imports, and in
    every function that reads them, where a Cast restores the dtype the function computes in.
    """
    saved_model_pb2 = submodule("core.protobuf.saved_model_pb2")

    saved = saved_model_pb2.SavedModel()
    with open(pb_path, "rb") as fh:
        saved.ParseFromString(fh.read())
    shown = "saved_model.pb"  # errors name the graph, not the staging folder it is written in
    for meta in saved.meta_graphs:
        if any(node.op == "RestoreV2" for node in meta.graph_def.node):
            _rewrite_graph_mode_saver(meta, set(dropped), retyped or {}, shown)
            continue
        if retyped:
            _retype_savedmodel_variables(meta, retyped, shown)
        if dropped:
            restore = meta.saver_def.restore_op_name.split(":")[0]
            names = {n.attr["f"].func.name for n in meta.graph_def.node if n.name == restore and "f" in n.attr}
            for func in meta.graph_def.library.function:
                if func.signature.name in names:
                    _prune_restore_function(func, set(dropped))
    for meta in saved.meta_graphs:
        canonical_collections(meta)
    with open(pb_path, "wb") as fh:
        fh.write(saved.SerializeToString(deterministic=True))


def _rewrite_graph_mode_saver(meta, dropped, retyped, path):
    """A TF1 SavedModel (simple_save, builder): the same surgery as a .meta, saved back in place."""
    graph = meta.graph_def
    for node in graph.node:
        if "_output_shapes" in node.attr:
            del node.attr["_output_shapes"]
    nodes = {n.name: n for n in graph.node}
    keys = [k.decode() for n in graph.node if n.op == "RestoreV2"
            for k in nodes[n.input[1].split(":")[0]].attr["value"].tensor.string_val]
    new = rewrite_meta_graph(meta, [k for k in keys if k not in dropped], retyped, path)
    meta.graph_def.CopyFrom(new.graph_def)
    meta.saver_def.CopyFrom(new.saver_def)
    meta.ClearField("collection_def")
    for key, value in new.collection_def.items():
        meta.collection_def[key].CopyFrom(value)


_CALL_OPS = {"StatefulPartitionedCall", "PartitionedCall"}
_READ_OUTPUTS = {"ReadVariableOp": "value", "ResourceGather": "output", "ResourceGatherNd": "output"}
_ASSIGN_OPS = {"AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp"}


def _retype_savedmodel_variables(meta, retyped, path):  # noqa: C901
    """Make the retyped variables of a TF2 SavedModel float16 (say) for both loaders.

    Entry points: the object graph's concrete functions receive variables as bound inputs (the TF2
    loader), and graph-level call nodes receive VarHandleOps (the TF1 loader). From there each
    resource argument is followed into the functions it is passed to. Reads get the new dtype and a
    Cast back; the restore function reads and assigns the stored dtype; the save function saves it.
    """
    from wcompress.errors import WcompressError

    wanted = {key: tf.as_dtype(dtype).as_datatype_enum for key, dtype in retyped.items()}
    functions = {f.signature.name: f for f in meta.graph_def.library.function}
    typed_args, pending = {}, []

    def mark(fname, index, types):
        if fname not in functions:
            raise WcompressError(f"cannot cast variables: function {fname!r} is missing from the SavedModel", path)
        if (fname, index) not in typed_args:
            typed_args[(fname, index)] = types
            pending.append((fname, index))

    # The TF2 loader builds variables from the object graph and binds them to functions' last inputs.
    objects = meta.object_graph_def
    var_types = {}
    for node_id, key in _object_graph_variable_keys(objects).items():
        if key in wanted:
            variable = objects.nodes[node_id].variable
            var_types[node_id] = (variable.dtype, wanted[key])
            variable.dtype = wanted[key]
    if objects.nodes and len(var_types) != len(wanted):
        missing = sorted(set(wanted) - set(_object_graph_variable_keys(objects).values()))
        raise WcompressError(f"cannot cast {missing[0]!r}: no variable of the object graph holds it", path)
    for fname, concrete in objects.concrete_functions.items():
        offset = len(functions[fname].signature.input_arg) - len(concrete.bound_inputs)
        for j, node_id in enumerate(concrete.bound_inputs):
            if node_id in var_types:
                mark(fname, offset + j, var_types[node_id])

    # The TF1 loader imports the graph: its VarHandleOps are those the restore call assigns, and
    # those graph-level calls pass into arguments that read a cast variable.
    graph = meta.graph_def
    nodes = {n.name: n for n in graph.node}
    restore_call = nodes[meta.saver_def.restore_op_name.split(":")[0]]
    handle_types, handled = {}, set()
    for key, index in _restore_assign_args(functions[restore_call.attr["f"].func.name]).items():
        if key in wanted:
            handle = nodes[restore_call.input[index].split(":")[0]]
            handle_types[handle.name] = (handle.attr["dtype"].type, wanted[key])

    # Restore functions read the stored dtype and pass it on to the assignment.
    stored = {}  # function name -> refs that now carry the stored dtype
    for func in functions.values():
        stored[func.signature.name] = _retype_restore_reads(func, wanted)

    casts = {}  # (function, cast ref) -> the stored-dtype ref it converts
    while True:
        for name in set(handle_types) - handled:
            handled.add(name)
            nodes[name].attr["dtype"].type = handle_types[name][1]
            _retype_graph_handle(graph, name, handle_types[name], mark, path)
        while pending:
            fname, index = pending.pop()
            _retype_function_arg(functions[fname], index, typed_args[(fname, index)], mark, stored[fname],
                                 casts, path)
        for node in graph.node:
            for pos, inp in enumerate(node.input if node.op in _CALL_OPS else ()):
                source = nodes.get(inp.split(":")[0])
                if source is not None and source.op == "VarHandleOp" and source.name not in handle_types \
                        and (node.attr["f"].func.name, pos) in typed_args:
                    handle_types[source.name] = typed_args[(node.attr["f"].func.name, pos)]
        if set(handle_types) == handled and not pending:
            break
    for func in functions.values():
        _save_stored_dtype(func, casts)
    _check_call_sites(meta, functions, typed_args, handle_types, var_types, path)


def _retype_graph_handle(graph, name, types, mark, path):
    """Every graph-level use of a cast VarHandleOp: reads cast back, initializers cast in, calls followed."""
    from wcompress.errors import WcompressError

    old, new = types
    for node in list(graph.node):
        for pos, inp in enumerate(node.input):
            if inp.startswith("^") or inp.split(":")[0] != name:
                continue
            if node.op in _CALL_OPS:
                mark(node.attr["f"].func.name, pos, types)
            elif node.op in _READ_OUTPUTS:
                _cast_after_graph_read(graph, node, old, new)
            elif node.op in _ASSIGN_OPS and pos == 0:  # an initializer: reads above are cast back already
                cast = graph.node.add()
                cast.name = node.name + "/wcompress_cast"
                cast.op = "Cast"
                cast.input.append(node.input[1])
                _set_cast(cast, old, new)
                node.input[1] = cast.name
                node.attr["dtype"].type = new
            elif node.op not in _DTYPE_FREE_RESOURCE_OPS:
                raise WcompressError(f"cannot cast {name!r}: the SavedModel's graph uses it in a {node.op}", path)


def _retype_function_arg(func, index, types, mark, stored, casts, path):
    """Every use of a cast resource argument inside one function."""
    from wcompress.errors import WcompressError

    fname, arg = func.signature.name, func.signature.input_arg[index].name
    old, new = types
    for node in list(func.node_def):
        for pos, inp in enumerate(node.input):
            if inp != arg:
                continue
            if node.op in _CALL_OPS:
                mark(node.attr["f"].func.name, pos, types)
            elif node.op in _READ_OUTPUTS:
                raw, cast = _cast_after_function_read(func, node, old, new)
                casts[(fname, cast)] = raw
            elif node.op in _ASSIGN_OPS and pos == 0:
                node.attr["dtype"].type = new
                if node.input[1] not in stored:
                    node.input[1] = _function_cast(func, node.input[1], node.name, old, new)
            elif node.op not in _DTYPE_FREE_RESOURCE_OPS:
                raise WcompressError(f"cannot cast a variable that {fname} uses in a {node.op} ({node.name})", path)


def _object_graph_variable_keys(objects):
    """Object-graph node id -> checkpoint key of each variable: the first breadth-first path from
    the root, named as TensorFlow names checkpoint keys (node ids match the checkpoint's graph)."""
    trackable_utils = submodule("python.trackable.trackable_utils")

    if not objects.nodes:
        return {}
    paths, queue = {0: []}, [0]
    while queue:
        node_id = queue.pop(0)
        for child in objects.nodes[node_id].children:
            if child.node_id not in paths:
                paths[child.node_id] = paths[node_id] + [trackable_utils.escape_local_name(child.local_name)]
                queue.append(child.node_id)
    return {i: trackable_utils.checkpoint_key("/".join(paths[i]), "VARIABLE_VALUE")
            for i, node in enumerate(objects.nodes) if node.WhichOneof("kind") == "variable" and i in paths}


def _restore_assign_args(func):
    """Checkpoint key -> index of the resource argument its AssignVariableOp writes, in a restore function."""
    nodes = {n.name: n for n in func.node_def}
    args = {a.name: i for i, a in enumerate(func.signature.input_arg)}
    found = {}
    for restore in [n for n in func.node_def if n.op == "RestoreV2"]:
        keys = [k.decode() for k in nodes[restore.input[1].split(":")[0]].attr["value"].tensor.string_val]
        for index, key in enumerate(keys):
            refs = {f"{restore.name}:tensors:{index}"}
            refs |= {f"{n.name}:output:0" for n in func.node_def if n.op == "Identity" and n.input[0] in refs}
            for node in func.node_def:
                if node.op == "AssignVariableOp" and node.input[1] in refs and node.input[0] in args:
                    found[key] = args[node.input[0]]
    return found


def _retype_restore_reads(func, wanted):
    """RestoreV2 reads the retyped keys in their stored dtype, and the Identity after it passes that
    on; returns the refs that now carry a stored dtype."""
    nodes = {n.name: n for n in func.node_def}
    refs = set()
    for restore in [n for n in func.node_def if n.op == "RestoreV2"]:
        keys = [k.decode() for k in nodes[restore.input[1].split(":")[0]].attr["value"].tensor.string_val]
        for index, key in enumerate(keys):
            if key not in wanted:
                continue
            restore.attr["dtypes"].list.type[index] = wanted[key]
            ref = f"{restore.name}:tensors:{index}"
            refs.add(ref)
            for node in func.node_def:
                if node.op == "Identity" and node.input and node.input[0] == ref:
                    node.attr["T"].type = wanted[key]
                    refs.add(f"{node.name}:output:0")
    return refs


def _function_cast(func, ref, name, src, dst):
    cast = func.node_def.add()
    cast.name = name + "/wcompress_cast"
    cast.op = "Cast"
    cast.input.append(ref)
    _set_cast(cast, src, dst)
    return f"{cast.name}:y:0"


def _cast_after_function_read(func, read, old, new):
    """A function's read op now yields `new`; every use of its value reads a Cast back to `old`."""
    read.attr["dtype"].type = new
    raw = f"{read.name}:{_READ_OUTPUTS[read.op]}:0"
    cast = _function_cast(func, raw, read.name, new, old)
    for node in func.node_def:
        if node.name != cast.split(":")[0]:
            for pos, inp in enumerate(node.input):
                if inp == raw:
                    node.input[pos] = cast
    for key, value in list(func.ret.items()):
        if value == raw:
            func.ret[key] = cast
    return raw, cast


def _save_stored_dtype(func, casts):
    """A save function saves the stored dtype: SaveV2 takes the read before its Cast back."""
    nodes = {n.name: n for n in func.node_def}
    for save in [n for n in func.node_def if n.op in ("SaveV2", "SaveSlices")]:
        for j, inp in enumerate(list(save.input)[3:]):
            if inp.startswith("^"):
                break
            chain, ref = [], inp
            while nodes.get(ref.split(":")[0]) is not None and nodes[ref.split(":")[0]].op == "Identity" \
                    and ref.endswith(":output:0"):
                chain.append(nodes[ref.split(":")[0]])
                ref = chain[-1].input[0]
            raw = casts.get((func.signature.name, ref))
            if raw is None:
                continue
            new = nodes[raw.split(":")[0]].attr["dtype"].type
            for identity in chain:
                identity.attr["T"].type = new
            if chain:
                chain[-1].input[0] = raw
            else:
                save.input[3 + j] = raw
            save.attr["dtypes"].list.type[j] = new


def _check_call_sites(meta, functions, typed_args, handle_types, var_types, path):
    """One function argument cannot read a float16 variable at one call and a float32 one at another."""
    from wcompress.errors import WcompressError

    def check(fname, pos, retyped_here, where):
        if (fname, pos) in typed_args and not retyped_here:
            raise WcompressError(f"cannot cast these variables: {fname} reads both cast and uncast variables "
                                 f"through one argument ({where}); cast more or fewer tensors (--tensors)", path)

    handles = {n.name for n in meta.graph_def.node if n.op == "VarHandleOp"}
    for node in meta.graph_def.node:
        if node.op in _CALL_OPS:
            for pos, inp in enumerate(node.input):
                if not inp.startswith("^") and inp.split(":")[0] in handles:
                    check(node.attr["f"].func.name, pos, inp.split(":")[0] in handle_types, node.name)
    for fname, func in functions.items():
        typed = {func.signature.input_arg[i].name for (f, i) in typed_args if f == fname}
        resources = {a.name for a in func.signature.input_arg if a.type == tf.resource.as_datatype_enum}
        for node in func.node_def:
            if node.op in _CALL_OPS:
                for pos, inp in enumerate(node.input):
                    if inp in resources:
                        check(node.attr["f"].func.name, pos, inp in typed, f"{fname}/{node.name}")
    for fname, concrete in meta.object_graph_def.concrete_functions.items():
        offset = len(functions[fname].signature.input_arg) - len(concrete.bound_inputs)
        for j, node_id in enumerate(concrete.bound_inputs):
            if meta.object_graph_def.nodes[node_id].WhichOneof("kind") == "variable":
                check(fname, offset + j, node_id in var_types, "bound input")


def _prune_restore_function(func, dropped):  # noqa: C901
    nodes = {n.name: n for n in func.node_def}
    removed = set()
    for restore in [n for n in func.node_def if n.op == "RestoreV2"]:
        names_node = nodes[restore.input[1].split(":")[0]]
        slices_node = nodes[restore.input[2].split(":")[0]]
        keys = [k.decode() for k in names_node.attr["value"].tensor.string_val]
        keep = [i for i, k in enumerate(keys) if k not in dropped]
        if len(keep) == len(keys):
            continue
        remap = {old: new for new, old in enumerate(keep)}
        for const in (names_node, slices_node):
            tensor = const.attr["value"].tensor
            values = list(tensor.string_val)
            del tensor.string_val[:]
            tensor.string_val.extend(values[i] for i in keep)
            tensor.tensor_shape.dim[0].size = len(keep)
            if "_output_shapes" in const.attr:
                const.attr["_output_shapes"].list.shape[0].dim[0].size = len(keep)
        for attr in ("dtypes",):
            types = list(restore.attr[attr].list.type)
            del restore.attr[attr].list.type[:]
            restore.attr[attr].list.type.extend(types[i] for i in keep)
        if "_output_shapes" in restore.attr:
            shapes = list(restore.attr["_output_shapes"].list.shape)
            del restore.attr["_output_shapes"].list.shape[:]
            restore.attr["_output_shapes"].list.shape.extend(shapes[i] for i in keep)
        out = restore.name + ":tensors:"
        for node in func.node_def:
            for pos, inp in enumerate(node.input):
                if inp.startswith(out):
                    k = int(inp[len(out):])
                    if k in remap:
                        node.input[pos] = out + str(remap[k])
                    else:
                        removed.add(node.name)
    # Whatever consumed a removed node's value goes too (Identity → AssignVariableOp).
    removed = remove_nodes(func.node_def, removed)
    if not removed:
        return
    for mapping in (func.ret, func.control_ret):
        for key in [k for k, v in mapping.items() if v.split(":")[0] in removed]:
            del mapping[key]
    outputs = [c for c in func.signature.control_output if c in func.control_ret]
    del func.signature.control_output[:]
    func.signature.control_output.extend(outputs)


def _retype_variables(meta, retyped, path, scales):
    """Graph surgery for casting variables (seed 000's float16 weights, without touching model code).

    Each retyped variable gets the new dtype, and every read of it is cast back to the dtype the
    graph computes in, so every consumer still sees the same dtype:
    - a VariableV2's snapshot `V/read` becomes a Cast; its initializer `V/Assign` casts the initial value;
    - a resource variable's (VarHandleOp) ReadVariableOp and ResourceGather read the new dtype and
      keep their name on a Cast placed after them; its initializer `V/Assign` casts the initial value.
    Ops that update the variable in place (optimizer steps, the old Saver's restores) cannot take
    the new dtype and are removed with everything that depends on their data.
    A variable with `scales` holds integer codes: its read is cast back and then multiplied by a
    Const of the per-channel scales (the last axis), under the read's name: seed 000's 8-bit weights
    in a graph that stock import_meta_graph + restore runs.
    """
    from wcompress.errors import WcompressError

    graph = meta.graph_def
    nodes = {n.name: n for n in graph.node}
    new_type = {}
    for name, dtype in retyped.items():
        var = nodes.get(name)
        if var is None:
            continue
        if var.op not in _VARIABLE_OPS:
            raise WcompressError(f"cannot cast {name!r}: the graph holds it as a {var.op}", path)
        new_type[name] = (var.attr["dtype"].type, tf.as_dtype(dtype).as_datatype_enum)
        var.attr["dtype"].type = new_type[name][1]
    removed = set()
    for node in list(graph.node):
        refs = [i.split(":")[0] for i in node.input if not i.startswith("^") and i.split(":")[0] in new_type]
        if not refs:
            continue
        old, new = new_type[refs[0]]
        if node.op == "Identity" and len(node.input) == 1:
            node.op = "Cast"  # V/read: same name, same output dtype, now converting
            del node.attr["T"]
            _set_cast(node, new, old)
            if refs[0] in scales:
                _scale_after(graph, node, scales[refs[0]], old)
        elif node.op in ("Assign", "AssignVariableOp") and node.name == refs[0] + "/Assign":
            cast = graph.node.add()
            cast.name = node.name + "/wcompress_cast"
            cast.op = "Cast"
            cast.input.append(node.input[1])
            _set_cast(cast, old, new)
            node.input[1] = cast.name
            node.attr["T" if node.op == "Assign" else "dtype"].type = new
        elif node.op in ("ReadVariableOp", "ResourceGather", "ResourceGatherNd"):
            cast = _cast_after_graph_read(graph, node, old, new)
            if refs[0] in scales:
                if node.op != "ReadVariableOp":
                    raise WcompressError(f"cannot dequantize {refs[0]!r}: it is read by a {node.op}", path)
                _scale_after(graph, cast, scales[refs[0]], old)
        elif node.op in _DTYPE_FREE_RESOURCE_OPS:
            continue
        else:
            removed.add(node.name)
    removed = remove_nodes(graph.node, removed)
    for key in list(meta.collection_def):
        col = meta.collection_def[key]
        if col.HasField("node_list"):
            values = [v for v in col.node_list.value if v.split(":")[0] not in removed]
            del col.node_list.value[:]
            col.node_list.value.extend(values)


# Ops that take a resource variable but none of its values: a new dtype leaves them valid.
_DTYPE_FREE_RESOURCE_OPS = {"VarIsInitializedOp", "DestroyResourceOp", "DisableCopyOnRead", "VariableShape"}


def _scale_after(graph, cast, scale, dtype):
    """`cast` moves to `<name>/wcompress_codes`; a Mul by a Const of `scale` takes its name."""
    name = cast.name
    cast.name = name + "/wcompress_codes"
    const = graph.node.add()
    const.name = name + "/wcompress_scale"
    const.op = "Const"
    const.attr["dtype"].type = dtype
    const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.asarray(scale), dtype=tf.as_dtype(dtype)))
    mul = graph.node.add()
    mul.name = name
    mul.op = "Mul"
    mul.input.extend([cast.name, const.name])
    mul.attr["T"].type = dtype
    if cast.device:
        mul.device = const.device = cast.device


def _set_cast(node, src, dst):
    node.attr["SrcT"].type = src
    node.attr["DstT"].type = dst
    node.attr["Truncate"].b = False


def _cast_after_graph_read(graph, read, old, new):
    """A GraphDef read op now yields `new`: it moves to `<name>/wcompress_read` and a Cast back to
    `old` takes its name, so every consumer (and tensor names users feed or fetch) is unchanged."""
    name = read.name
    read.name = name + "/wcompress_read"
    read.attr["dtype"].type = new
    cast = graph.node.add()
    cast.name = name
    cast.op = "Cast"
    cast.input.append(read.name)
    if read.device:
        cast.device = read.device
    _set_cast(cast, new, old)
    return cast


def remove_nodes(nodes, removed):
    """Remove `removed` from a repeated NodeDef field, with every node that consumes their values;
    control dependencies on them are dropped. Returns all names removed."""
    removed = set(removed)
    grew = True
    while grew:
        grew = False
        for node in nodes:
            if node.name not in removed and any(
                    not i.startswith("^") and i.split(":")[0] in removed for i in node.input):
                removed.add(node.name)
                grew = True
    kept = [n for n in nodes if n.name not in removed]
    for node in kept:
        inputs = [i for i in node.input if not (i.startswith("^") and i[1:] in removed)]
        del node.input[:]
        node.input.extend(inputs)
    del nodes[:]
    nodes.extend(kept)
    return removed
