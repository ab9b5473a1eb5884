"""What a kernel sees: each layer's (or TF1 op's) input as rows of X, so that the product is
X @ kernel.reshape(-1, out), and the statistics X^T X / n that Wanda, SparseGPT and GPTQ use."""

from wcompress.formats.tfenv import tf


# The kernels of each Keras layer kind whose inputs are captured, in the order layer_grams returns them.
KERNEL_ATTRS = {"Dense": ("kernel",), "Conv1D": ("kernel",), "Conv2D": ("kernel",),
                 "DepthwiseConv2D": ("kernel",), "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel"),
                 # Recurrent layers: attributes of their cell; the kernel reads x_t, the recurrent kernel h_(t-1).
                 "LSTM": ("kernel", "recurrent_kernel"), "GRU": ("kernel", "recurrent_kernel"),
                 "SimpleRNN": ("kernel", "recurrent_kernel")}


def is_recurrent(layer):
    return type(layer).__name__ in ("LSTM", "GRU", "SimpleRNN") and hasattr(layer, "cell")


def kernel_patch(layer):
    """How a Keras layer's input becomes rows of X: ("dense",) or (kind, sizes, strides, rates, padding)."""
    kind = type(layer).__name__
    if kind == "Dense":
        return ("dense",)
    if is_recurrent(layer):
        # A GRU with reset_after=False multiplies r * h_(t-1), not h_(t-1), by part of its recurrent kernel.
        if getattr(layer, "stateful", False) or (kind == "GRU" and not getattr(layer.cell, "reset_after", True)):
            return None
        return ("recurrent",)
    if kind not in KERNEL_ATTRS or getattr(layer, "groups", 1) != 1 or getattr(layer, "depth_multiplier", 1) != 1:
        return None
    if getattr(layer, "data_format", "channels_last") != "channels_last" or layer.padding not in ("valid", "same"):
        return None
    size, stride, rate = (tuple(getattr(layer, a)) for a in ("kernel_size", "strides", "dilation_rate"))
    if kind == "Conv1D":
        size, stride, rate = (1,) + size, (1,) + stride, (1,) + rate
    return ("conv" if kind.startswith("Conv") else "depthwise", size, stride, rate, layer.padding.upper())


def layer_grams(layer, shape, x):
    """[(X^T X, rows)] for each of the layer's KERNEL_ATTRS. A depthwise kernel's channels each see their
    own patches: one (k x k) matrix per channel. A separable layer's pointwise kernel sees the depthwise
    output (there is no bias between the two)."""
    if shape[0] != "depthwise":
        return [gram(rows_of(x, shape))]
    _, size, stride, rate, padding = shape
    channels = x.shape[-1]
    patches = tf.reshape(tf.image.extract_patches(x, (1, *size, 1), (1, *stride, 1), (1, *rate, 1), padding),
                         (-1, size[0] * size[1], channels))
    patches = tf.cast(patches, tf.float32)
    grams = [(tf.einsum("nkc,nlc->ckl", patches, patches), tf.shape(patches)[0])]
    if type(layer).__name__ == "SeparableConv2D":
        inner = tf.nn.depthwise_conv2d(x, tf.cast(layer.depthwise_kernel, x.dtype), (1, *stride, 1), padding,
                                       dilations=rate)
        grams.append(gram(tf.reshape(inner, (-1, channels))))
    return grams


def layer_inputs(layer, shape):
    """The tensors a layer's capture needs: its input, and a recurrent layer's mask when it was given one
    (Keras records it as a second input); None for a layer called on anything else (initial states)."""
    given = layer.input
    if not isinstance(given, (list, tuple)):
        return [given]
    if shape[0] == "recurrent" and len(given) == 2 and len(given[1].shape) == 2 and str(given[1].dtype) == "bool":
        return list(given)
    return None


def sequence_copy(layer):
    """The recurrent layer again, returning every step's output in time order, with the same weights."""
    config = {**layer.get_config(), "return_sequences": True, "return_state": False, "go_backwards": False,
              "name": layer.name + "_wcompress_capture"}
    copy = type(layer).from_config(config)
    copy.build(tuple(layer_inputs(layer, ("recurrent",))[0].shape))
    copy.set_weights(layer.get_weights())
    return copy


def recurrent_grams(layer, sequence, x, mask=None):
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
    return [gram(tf.boolean_mask(x, mask)), gram(tf.boolean_mask(before, mask))]


def op_patch(op):
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


def variable_behind(tensor, through=()):
    """The name of the variable a kernel input reads (through Identity / ReadVariableOp, and the op types in
    `through`), or None."""
    op = tensor.op
    while (op.type in ("Identity", "ReadVariableOp") or op.type in through) and op.inputs:
        op = op.inputs[0].op
    return op.name if op.type in ("VariableV2", "Variable", "VarHandleOp") else None


def rows_of(x, shape):
    """Rows of X for one batch of a layer's input x."""
    if shape[0] == "dense":
        return tf.reshape(x, (-1, tf.shape(x)[-1]))
    _, size, stride, rate, padding = shape
    if x.shape.rank == 3:  # Conv1D: (batch, steps, channels) as one image row
        x = x[:, None]
    patches = tf.image.extract_patches(x, (1, *size, 1), (1, *stride, 1), (1, *rate, 1), padding)
    return tf.reshape(patches, (-1, tf.shape(patches)[-1]))


def gram(rows):
    rows = tf.cast(rows, tf.float32)
    return tf.matmul(rows, rows, transpose_a=True), tf.shape(rows)[0]
