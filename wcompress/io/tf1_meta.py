"""TF1 MetaGraphs (`.meta`) and SavedModel graphs: variable order, and keeping their savers in step
with a checkpoint whose tensors were dropped."""

from .tfenv import tf

_VARIABLE_OPS = {"VariableV2", "Variable", "VarHandleOp"}


def load_meta_graph_def(path):
    """Parse a .meta; drop `_output_shapes`, which old graphs carry and TF 2.21 refuses to import."""
    from tensorflow.core.protobuf import meta_graph_pb2

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


def rewrite(meta_in, meta_out, kept, retyped):
    """Write a .meta whose Saver saves and restores exactly the `kept` variables, with the variables
    in `retyped` (name -> numpy dtype) stored in that dtype and cast back where the graph reads them."""
    meta = load_meta_graph_def(meta_in)
    if retyped:
        _retype_variables(meta, retyped, meta_in)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.train.import_meta_graph(meta, clear_devices=False)
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
        saver = tf.compat.v1.train.Saver(
            var_list={name: variables[name] for name in kept if name in variables}, name="wcompress_saver"
        )
        tf.compat.v1.train.export_meta_graph(filename=meta_out, graph=graph, saver_def=saver.as_saver_def())


def update_savedmodel_restore(pb_path, dropped=(), retyped=None):
    """Keep a SavedModel's restore function in step with its variables bundle.

    The restore op named by the SaverDef calls a function holding a RestoreV2 whose outputs feed
    Identity → AssignVariableOp pairs. Dropped keys lose their entry and that pair; retyped keys
    (e.g. stored float16) are read in their stored dtype and cast back before the assignment.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    from ..errors import WcompressError

    saved = saved_model_pb2.SavedModel()
    with open(pb_path, "rb") as fh:
        saved.ParseFromString(fh.read())
    for meta in saved.meta_graphs:
        if any(node.op == "RestoreV2" for node in meta.graph_def.node):
            raise WcompressError("this SavedModel restores in graph mode; wcompress rewrites only restore "
                                 "functions", pb_path)
        restore = meta.saver_def.restore_op_name.split(":")[0]
        names = {n.attr["f"].func.name for n in meta.graph_def.node if n.name == restore and "f" in n.attr}
        for func in meta.graph_def.library.function:
            if func.signature.name in names:
                if retyped:
                    _retype_restore_function(func, retyped)
                if dropped:
                    _prune_restore_function(func, set(dropped))
    with open(pb_path, "wb") as fh:
        fh.write(saved.SerializeToString())


def _retype_restore_function(func, retyped):
    nodes = {n.name: n for n in func.node_def}
    for restore in [n for n in func.node_def if n.op == "RestoreV2"]:
        keys = [k.decode() for k in nodes[restore.input[1].split(":")[0]].attr["value"].tensor.string_val]
        for index, key in enumerate(keys):
            if key not in retyped:
                continue
            stored = tf.as_dtype(retyped[key]).as_datatype_enum
            wanted = restore.attr["dtypes"].list.type[index]
            restore.attr["dtypes"].list.type[index] = stored
            source = f"{restore.name}:tensors:{index}"
            readers = [n for n in func.node_def if source in n.input]
            for reader in readers:
                if reader.op == "Identity":
                    reader.attr["T"].type = stored  # pass the stored value on, cast after it
                    source_out, after = f"{reader.name}:output:0", reader.name
                else:
                    source_out, after = source, None
                cast = func.node_def.add()
                cast.name = (after or f"{restore.name}_{index}") + "/wcompress_cast"
                cast.op = "Cast"
                cast.input.append(source_out)
                cast.attr["SrcT"].type = stored
                cast.attr["DstT"].type = wanted
                cast.attr["Truncate"].b = False
                for node in func.node_def:
                    if node is cast:
                        continue
                    for pos, inp in enumerate(node.input):
                        if inp == source_out and (after or node is reader):
                            node.input[pos] = f"{cast.name}:y:0"


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


def _retype_variables(meta, retyped, path):
    """Graph surgery for casting variables (seed 000's float16 weights, without touching model code).

    Each retyped variable gets the new dtype, and every read of it is cast back to the dtype the
    graph computes in, so every consumer still sees the same dtype:
    - a VariableV2's snapshot `V/read` becomes a Cast; its initializer `V/Assign` casts the initial value;
    - a resource variable's (VarHandleOp) ReadVariableOp and ResourceGather read the new dtype and
      keep their name on a Cast placed after them; its initializer `V/Assign` casts the initial value.
    Ops that update the variable in place (optimizer steps, the old Saver's restores) cannot take
    the new dtype and are removed with everything that depends on their data.
    """
    from ..errors import WcompressError

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
        elif node.op in ("Assign", "AssignVariableOp") and node.name == refs[0] + "/Assign":
            cast = graph.node.add()
            cast.name = node.name + "/wcompress_cast"
            cast.op = "Cast"
            cast.input.append(node.input[1])
            _set_cast(cast, old, new)
            node.input[1] = cast.name
            node.attr["T" if node.op == "Assign" else "dtype"].type = new
        elif node.op in ("ReadVariableOp", "ResourceGather", "ResourceGatherNd"):
            _cast_after_graph_read(graph, node, old, new)
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
