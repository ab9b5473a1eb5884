"""What the tensor store knows about a tensor without loading it: name, shape, dtype, layer, role."""

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from wcompress.formats.dtypes import is_float

KERNEL = "kernel"
BIAS = "bias"
BATCHNORM = "batchnorm"
EMBEDDING = "embedding"
RECURRENT = "recurrent_kernel"
OPTIMIZER = "optimizer"
STEP = "step"
METRIC = "metric"
QUANTIZED = "quantized kernel"
SCALE = "scale"
OTHER = "other"

ROLES = (KERNEL, BIAS, BATCHNORM, EMBEDDING, RECURRENT, QUANTIZED, SCALE, OPTIMIZER, STEP, METRIC, OTHER)
# Roles that are training state rather than model: `strip` drops them, profile totals them apart.
TRAINING_STATE = (OPTIMIZER, STEP, METRIC)
# An already-quantized layer (Keras's int8/int4 modes, our TF1 int8 graphs): integer codes, and the
# parameters that turn them back into weights (Keras's scales, int4 zero points and group indices).
QUANTIZATION = (QUANTIZED, SCALE)

_OPTIMIZER_LEAF = re.compile(
    r"^(Adam|Adam_\d+|Momentum|RMSProp|RMSProp_\d+|Adagrad|Adadelta|Adadelta_\d+|Ftrl|Ftrl_\d+|"
    r"ExponentialMovingAverage|accumulator|m|v|velocity|momentum)$"
)
_STEP_LEAF = {"global_step", "save_counter", "iter", "iterations", "step"}
_BN_LEAF = {"gamma", "beta", "moving_mean", "moving_variance", "moving_var"}
_KERNEL_LEAF = {"kernel", "depthwise_kernel", "pointwise_kernel", "weights", "weight", "w", "W"}
_BIAS_LEAF = {"bias", "biases", "b", "depthwise_bias"}
_SCALE_LEAF = re.compile(r"^((kernel|embeddings|inputs|outputs_grad)_(scale|zero|amax_history)|g_idx)$")


@dataclass
class TensorInfo:
    name: str
    shape: tuple
    dtype: np.dtype
    layer: str
    role: str
    order: int = 0

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self):
        return self.size * np.dtype(self.dtype).itemsize

    @property
    def is_float(self):
        return is_float(self.dtype)


def classify(leaf, shape, dtype, parents=()):
    """Role of a variable from its own name, its parents' names and its shape."""
    dtype = np.dtype(dtype) if not isinstance(dtype, np.dtype) else dtype
    parts = set(parents)
    if "metrics" in parts and "keras_api" in parts:
        return METRIC
    if ".OPTIMIZER_SLOT" in parts or "optimizer" in parts or "optimizer_weights" in parts:
        return OPTIMIZER
    if leaf in ("beta1_power", "beta2_power") or _OPTIMIZER_LEAF.match(leaf):
        # A bare `m`/`v` is only a slot under an optimizer; elsewhere it is a model variable.
        if leaf not in ("m", "v", "momentum") or parts & {"Adam", "optimizer"}:
            return OPTIMIZER
    if leaf in _STEP_LEAF and len(shape) == 0:
        return STEP
    if _SCALE_LEAF.match(leaf):
        return SCALE
    if not is_float(dtype):
        weights = leaf in _KERNEL_LEAF or leaf in ("embeddings", "embedding") or "weight" in leaf.lower()
        if weights and len(shape) >= 2:
            return QUANTIZED  # integer codes where a layer keeps its weights
        return STEP if len(shape) == 0 else OTHER
    if leaf in _BN_LEAF:
        return BATCHNORM
    if leaf in ("embeddings", "embedding", "embedding_weights"):
        return EMBEDDING
    if leaf == "recurrent_kernel":
        return RECURRENT
    if leaf in _KERNEL_LEAF or ("weight" in leaf.lower() and len(shape) >= 2):
        return KERNEL
    if leaf in _BIAS_LEAF or "bias" in leaf.lower():
        return BIAS
    if len(shape) >= 2:
        return KERNEL
    return OTHER


def quantized_layer_names(infos, roles=(QUANTIZED,)):
    """The layers holding tensors of these roles (by default integer codes), in model order."""
    return list(dict.fromkeys(t.layer for t in infos if t.role in roles))


def quantized_layers(infos, modes=None):
    """layer -> (code bits, weights, bytes) for each layer holding integer codes: the bytes of its codes
    and scales over the weights they stand for. `modes` (layer -> Keras quantization mode, where the file
    says) gives the code width; otherwise an integer zero point marks Keras's packed int4 layout."""
    by_layer = {}
    for info in infos:
        if info.role in QUANTIZATION:
            by_layer.setdefault(info.layer, []).append(info)
    out = {}
    for layer, members in by_layer.items():
        codes = [t for t in members if t.role == QUANTIZED]
        if not codes:
            continue
        mode = (modes or {}).get(layer)
        packed = mode.startswith("int4") if mode else any(
            t.role == SCALE and np.dtype(t.dtype).kind in "iu" for t in members)
        bits = 4 if packed else 8
        weights = sum(_packed_weights(t, members) if packed else t.size for t in codes)
        out[layer] = (bits, weights, sum(t.nbytes for t in members))
    return out


def _packed_weights(codes, members):
    """Weights held by int4 codes packed two to a byte along the last axis: the scales' last axis counts
    the columns (an odd count leaves half a byte empty)."""
    rows = codes.size // codes.shape[-1] if codes.shape and codes.shape[-1] else 0
    for t in members:
        if t.role == SCALE and t.is_float and t.shape and (t.shape[-1] + 1) // 2 == codes.shape[-1]:
            return rows * t.shape[-1]
    return codes.size * 2


def natural_key(text):
    """Sort 'layer_10' after 'layer_9'."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", text)]


def assign_layer_order(infos, layer_sequence=None):
    """Set `order` on every tensor: position of its layer in `layer_sequence`, else natural order.

    The sort is stable: tensors of one layer keep the order the caller gave them.
    """
    seq = list(dict.fromkeys(layer_sequence or []))
    # Layers with no place in the model (optimizer state, "(optimizer)") go last.
    rest = sorted({i.layer for i in infos} - set(seq), key=lambda n: (n.startswith("("), natural_key(n)))
    index = {layer: n for n, layer in enumerate(seq + rest)}
    for info in infos:
        info.order = index[info.layer]
    infos.sort(key=lambda i: i.order)
    return infos


def read_order_file(path):
    """An --order file: one layer name per line, '#' comments allowed."""
    with open(path) as fh:
        return [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]


def content_key(array):
    """(shape, dtype, 16-byte blake2b of the bytes): equal keys, equal arrays (matching tensors to variables,
    remembering a rounding)."""
    digest = hashlib.blake2b(np.ascontiguousarray(array).view(np.uint8).reshape(-1), digest_size=16).digest()
    return array.shape, array.dtype.str, digest
