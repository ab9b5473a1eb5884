"""Symmetric per-output-channel integer quantization (round to nearest), shared by the container's
`--values int8|int4` and the `quantize` pass.

For a float tensor of rank >= 2, each channel c of its channel axis gets scale_c = max|w_c| / L (1 for
an all-zero channel) and codes round(w / scale_c) clipped to ±L, L = 127 for 8 bits and 7 for 4 bits;
the value is codes x scale. The channel axis is the last one (the output channel of Keras and TF
kernels) unless it has size 1: then the one before it, so a depthwise kernel (h, w, in, 1) gets a
scale per channel it filters, and a Dense kernel with one output a scale per input, not one for all.
"""

import weakref
from collections import OrderedDict

import numpy as np

from wcompress.errors import WcompressError
from wcompress.formats.dtypes import is_float
from wcompress.formats.tensors import content_key

LEVELS = {8: 127, 4: 7}

# ecq: entropy-coded uniform quantization (`--values ecq --qp N`, written "ecq:N"); N moves every step
# together, 4 steps of N per doubling of the step (about one bit per weight less). Levels round(w / step)
# are not clipped. Channel c of a kernel gets the step 2^(N/4) x r_c, r_c = sqrt(w_c' H w_c / tr H), H = X'X
# of the layer's inputs (the identity without calibration data: then the channel's RMS): every channel's
# output then carries the same signal-to-noise ratio. Where calibration data also measured how the model's
# output moves with each weight (ecq_units' u_c), the step is 2^(N/4) x sqrt(r_c u_c): halfway, on a log
# scale, to the allocation that is optimal for the output's squared error at high rate. Measured with GPTQ
# (bench_rd's data): at the same held-out quality, sqrt(r u) made fer's file 8% smaller than r alone and
# u alone 4%; MTT_musicnn 3% smaller than r while u alone was 15% larger (a linearised sensitivity zeroes
# whole channels whose loss it underestimates); mhcnuggets 4% smaller.
QP_RANGE = (-48, 48)
MAX_ECQ_LEVEL = 1 << 23  # well inside the coder's bound (levels.MAX_LEVEL)


def parse_values(values):
    """("ecq", qp) for "ecq:N", else (values, None); a malformed ecq setting is a WcompressError."""
    if not isinstance(values, str) or not values.startswith("ecq"):
        return values, None
    try:
        qp = int(values.split(":", 1)[1])
    except (IndexError, ValueError):
        raise WcompressError(f"ecq values are written ecq:QP with an integer QP, not {values!r}") from None
    if not QP_RANGE[0] <= qp <= QP_RANGE[1]:
        raise WcompressError(f"--qp takes {QP_RANGE[0]}..{QP_RANGE[1]}, not {qp}")
    return "ecq", qp


def stores_codes(values):
    """Whether a container storing `values` keeps integer codes (int8, int4, ecq:QP): what calibration rounds.
    A malformed ecq setting is a WcompressError."""
    return parse_values(values)[0] in ("int8", "int4", "ecq")


def ecq_values(qp):
    return f"ecq:{int(qp)}"


def quantized_label(quantized):
    """How an index entry's `quantized` record is named to users: int8, int4 or ecq:QP."""
    return ecq_values(quantized["ecq"]) if "ecq" in quantized else f"int{quantized['bits']}"


def ecq_units(fisher, variance):
    """{tensor name: float32 unit step per ecq channel} from each tensor's output sensitivity.

    `fisher[name]` is E over examples of (d(v . f)/dw)^2 for each weight w (f the model's output, v a
    standard normal probe): the output's squared change per squared change of w. Rounding a channel of
    n_c weights to a step D_c adds about n_c F_c D_c^2 / 12 to E|df|^2 (F_c its weights' mean), and the bits
    it saves go as -n_c log2 D_c: the sum of errors at a given size is least where every D_c^2 F_c is the
    same. The unit is chosen so that, over all N kernel weights, the predicted error at QP 0 is 1/12 of
    `variance` (the outputs' summed variance): u_c = sqrt(variance / (N F_c)). A channel the output hardly
    moves with is kept from an unbounded step: F_c >= 1e-4 x its tensor's mean.

    A float vector (bias, batch norm) gets one unit for the whole tensor, from its mean F, in the same units:
    shape (1,). Its step is at most its RMS / 16, since the linearised sensitivity of a whole vector can
    understate what rounding it away costs."""
    sized = {name: f for name, f in fisher.items() if f.ndim >= 2 and f.size}
    total = sum(f.size for f in sized.values())
    if not variance > 0 or not total:
        return {}
    units = {}
    for name, f in sized.items():
        axis = ecq_axis(f.shape)
        per_channel = np.moveaxis(np.asarray(f, np.float64), axis, -1).reshape(-1, f.shape[axis]).mean(axis=0)
        mean = float(per_channel.mean())
        if np.isfinite(mean) and mean > 0:
            units[name] = np.sqrt(variance / (total * np.maximum(per_channel, 1e-4 * mean)))
    for name, f in fisher.items():
        mean = float(np.mean(f)) if f.ndim == 1 and f.size else 0.0
        if np.isfinite(mean) and mean > 0:
            units[name] = np.array([np.sqrt(variance / (total * mean))])
    return units


def ecq_vector(array, unit):
    """Whether ecq quantizes this float vector: one with a measured unit (see ecq_units) and a non-zero value
    (an all-zero vector, such as a folded batch norm's statistics, costs nothing stored as it is)."""
    return array.ndim == 1 and array.size > 0 and is_float(array.dtype) and unit is not None \
        and np.shape(unit) == (1,) and bool(np.any(array))


VECTOR_STEP_CAP = 1 / 16  # x the vector's RMS (ecq_units)


class Calibration(dict):
    """What calibration data measured: {tensor name: H, its inputs' second moment} (GPTQ, wanda, sparsegpt),
    `units`, {tensor name: ecq's unit step per channel} where the output's sensitivity was measured, and
    `vectors`, {tensor name: float vector fitted to the dense model's outputs} (runtime/fitting.py), which
    an ecq container stores in place of the model's own (calibrated_source)."""

    def __init__(self, hessians=(), units=None, vectors=None, fit=None):
        super().__init__(hessians)
        self.units = dict(units or {})
        self.vectors = dict(vectors or {})
        self.fit = fit


def calibrated_source(calibration, name, array, values):
    """The array a container storing `values` codes for tensor `name`: its fitted vector where ecq's
    calibration fitted one, else `array` itself."""
    fitted = getattr(calibration, "vectors", {}).get(name)
    if fitted is None or parse_values(values)[0] != "ecq" or np.shape(fitted) != np.shape(array):
        return array
    return fitted


def ecq_unit(calibration, name):
    """The tensor's measured unit steps, or None (then ecq steps come from H or the weights alone)."""
    return getattr(calibration, "units", {}).get(name)


def ecq_steps(flat, qp, hessian=None, unit=None):
    """The float32 step of each column of `flat` (inputs, channels) at quality parameter `qp`."""
    flat = flat.astype(np.float64, copy=False)
    energy = np.mean(flat * flat, axis=0)
    if hessian is not None:
        h = np.asarray(hessian, dtype=np.float64)
        trace = float(np.trace(h))
        if trace > 0:
            # A channel its inputs hardly excite still gets a step from its own RMS, not from nothing.
            energy = np.maximum(np.einsum("ic,ic->c", flat, h @ flat) / trace, 1e-4 * energy)
    steps = np.sqrt(energy)
    if unit is not None and np.shape(unit) == (flat.shape[1],):
        steps = np.sqrt(steps * np.asarray(unit, np.float64))  # halfway: see the note at the top
    steps = 2.0 ** (qp / 4) * steps
    top = np.abs(flat).max(axis=0) if flat.size else np.zeros(flat.shape[1])
    return steps_from_exponents(step_exponents(steps, top / MAX_ECQ_LEVEL))


# A step is a choice, not a measurement: it is rounded to the grid 2^(k/8) (within 4.4%), and the container
# stores the integer k (int16; "scales" of an ecq entry), which codes to ~6 bits a channel where a float32
# step took ~13 (fer: 1.8 KB of steps, a twentieth of its file). The grid's eight mantissas are float32
# constants and ldexp is exact, so writer and reader agree bit for bit on every platform.
STEP_GRID = 8
_STEP_MANTISSAS = np.array([2.0 ** (i / STEP_GRID) for i in range(STEP_GRID)], dtype=np.float32)
STEP_EXPONENT_RANGE = (-125 * STEP_GRID, 127 * STEP_GRID)  # normal float32 steps only


def step_exponents(steps, floor=0.0):
    """int16 k of each step's nearest grid point 2^(k/8), the smallest at least `floor` (both float64);
    a step that is zero or not finite (a channel of zeros) gets k = 0, a step of 1."""
    steps = np.asarray(steps, np.float64)
    usable = np.isfinite(steps) & (steps > 0)
    k = np.where(usable, np.rint(STEP_GRID * np.log2(np.where(usable, steps, 1.0))), 0.0)
    floor = np.asarray(floor, np.float64)
    least = np.ceil(STEP_GRID * np.log2(np.where(floor > 0, floor, 1.0)))
    k = np.clip(np.where(floor > 0, np.maximum(k, least), k), *STEP_EXPONENT_RANGE)
    return k.astype(np.int16)


def steps_from_exponents(exponents):
    """float32 2^(k/8) of each int16 k (what the reader multiplies the levels by)."""
    k = np.asarray(exponents, np.int64)
    return np.ldexp(_STEP_MANTISSAS[k % STEP_GRID], (k // STEP_GRID).astype(np.int32)).astype(np.float32)


def quantize_ecq(array, qp, hessian=None, unit=None):
    """(int32 levels of the array's shape, float32 step per channel of `ecq_axis`): GPTQ-rounded where
    `hessian` fits the array (see quantize_calibrated), else rounded to nearest; `unit`: see ecq_units.
    A vector (ecq_vector) gets one step: 2^(qp/4) x min(unit, RMS / 16)."""
    if array.ndim == 1:
        flat = np.asarray(array, np.float64)
        unit = min(float(unit[0]), VECTOR_STEP_CAP * float(np.sqrt(np.mean(flat * flat))))
        top = float(np.abs(flat).max()) if flat.size else 0.0
        steps = steps_from_exponents(step_exponents([2.0 ** (qp / 4) * unit], top / MAX_ECQ_LEVEL))
        return np.rint(flat / steps[0]).astype(np.int32), steps
    calibrated = quantize_calibrated(array, hessian, None, qp, unit)
    if calibrated is not None:
        return calibrated
    axis = ecq_axis(array.shape)
    moved = np.moveaxis(array, axis, -1)
    flat = moved.reshape(-1, moved.shape[-1]).astype(np.float32, copy=False)
    steps = ecq_steps(flat, qp, unit=unit)
    levels = np.rint(flat / steps).astype(np.int32)
    return np.moveaxis(levels.reshape(moved.shape), -1, axis), steps


def channel_axis(shape):
    return len(shape) - 2 if shape[-1] == 1 else len(shape) - 1


def ecq_axis(shape):
    """ecq's step goes with each output a channel feeds: the last axis, but a depthwise kernel's (h, w, c, 1)
    channels are axis 2. A Dense kernel with one output keeps one step: a step per input (channel_axis's
    choice for int8) would be each weight's own size, and a QP above 0 would round every weight to zero.
    A vector has one step for all its values: None."""
    if len(shape) < 2:
        return None
    return len(shape) - 2 if len(shape) == 4 and shape[-1] == 1 else len(shape) - 1


def quantize(array, levels):
    """(int8 codes of the array's shape, float32 scale per channel of `channel_axis`)."""
    axis = channel_axis(array.shape)
    moved = np.moveaxis(array, axis, -1)
    flat = moved.reshape(-1, moved.shape[-1]).astype(np.float32, copy=False)
    top = np.abs(flat).max(axis=0)
    scale = np.where(top > 0, top / levels, 1.0).astype(np.float32)
    codes = np.clip(np.rint(flat / scale), -levels, levels).astype(np.int8)
    return np.moveaxis(codes.reshape(moved.shape), -1, axis), scale


def broadcast_scale(scale, ndim, axis):
    """The per-channel scales shaped to multiply a tensor of `ndim` axes along `axis` (None: one scale)."""
    if axis is None:
        return np.asarray(scale).reshape(())
    return np.asarray(scale).reshape([-1 if a == axis else 1 for a in range(ndim)])


def dequantize(codes, scale, dtype, axis):
    return (codes.astype(np.float32) * broadcast_scale(scale, codes.ndim, axis)).astype(dtype, copy=False)


def quantizable(array):
    return is_float(array.dtype) and array.ndim >= 2 and array.size > 0


class QuantizedCodes(np.ndarray):
    """Integer codes that stand for codes x `scale` (float32, shaped to broadcast along the channel axis): what the
    `quantize` pass hands a writer that stores codes and dequantizes where the model reads them."""

    def __new__(cls, codes, scale):
        obj = np.asarray(codes).view(cls)
        obj.scale = scale
        return obj

    def __array_finalize__(self, obj):
        self.scale = getattr(obj, "scale", None)


def gptq(array, hessian, levels, damp=0.01, block=128, qp=None, unit=None):
    """Codes and scales like `quantize`, the rounding error of each input row compensated on the rows not
    yet quantized (GPTQ: Frantar et al. 2022, "Accurate Post-Training Quantization for Generative
    Pre-trained Transformers", Algorithm 1, with act-order).

    `array` is read as (inputs, channels) = array.reshape(-1, channels): a Dense kernel, or a convolution
    kernel whose leading axes are one im2col patch. `hessian` is X^T X / n over calibration inputs X
    (n x inputs); it is damped by `damp` x its mean diagonal. The scales are `quantize`'s, so the two
    differ only in rounding. Weights that are zero stay zero (a pruned model keeps its mask); their
    error is compensated like any other. With `qp` (and `levels` None) the grid is ecq's: `ecq_steps`
    (from `unit` where given), levels unclipped, int32.
    """
    flat = array.reshape(-1, array.shape[-1]).astype(np.float64)
    rows = flat.shape[0]
    if hessian.shape != (rows, rows):
        raise ValueError(f"hessian {hessian.shape} does not match {rows} input rows")
    if qp is None:
        top = np.abs(flat).max(axis=0)
        scale = np.where(top > 0, top / levels, 1.0).astype(np.float32)
    else:
        scale, levels = ecq_steps(flat, qp, hessian, unit), MAX_ECQ_LEVEL
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) <= 0  # inputs never active: nothing to compensate through them
    h[dead, dead] = 1.0
    h[np.diag_indices(rows)] += damp * np.mean(np.diag(h))
    order = np.argsort(-np.diag(h), kind="stable")  # act-order: the most active inputs first
    h = h[np.ix_(order, order)]
    work = flat[order]
    pruned = work == 0
    upper = upper_cholesky_of_inverse(h)  # H^-1 = U^T U
    codes = np.empty(work.shape, dtype=np.int8 if qp is None else np.int32)
    step = scale.astype(np.float64)
    for start in range(0, rows, block):
        end = min(start + block, rows)
        part, errors, u = work[start:end].copy(), np.zeros((end - start, work.shape[1])), upper[start:end, start:end]
        for i in range(end - start):
            q = np.where(pruned[start + i], 0.0, np.clip(np.rint(part[i] / step), -levels, levels))
            codes[start + i] = q
            error = (part[i] - q * step) / u[i, i]
            part[i:] -= np.outer(u[i, i:], error)
            errors[i] = error
        work[end:] -= upper[start:end, end:].T @ errors
    out = np.empty_like(codes)
    out[order] = codes
    return out.reshape(array.shape), scale


def upper_cholesky_of_inverse(h):
    """U, upper triangular, with H^-1 = U^T U, without forming H^-1: with J the reversal permutation,
    J H J = L L^T (Cholesky) gives H^-1 = (J L^-T J)(J L^-1 J), so U = J L^-1 J. Two triangular
    factorisations cost a third of inverting H and factorising the inverse."""
    lower = np.linalg.cholesky(h[::-1, ::-1])
    return np.ascontiguousarray(_lower_inverse(lower)[::-1, ::-1])


def _lower_inverse(lower, leaf=256):
    """The inverse of a lower-triangular matrix by halves (matrix products, where the time is)."""
    n = lower.shape[0]
    if n <= leaf:
        return np.linalg.inv(lower)
    k = n // 2
    top, bottom = _lower_inverse(lower[:k, :k], leaf), _lower_inverse(lower[k:, k:], leaf)
    out = np.zeros_like(lower)
    out[:k, :k], out[k:, k:] = top, bottom
    out[k:, :k] = -bottom @ (lower[k:, :k] @ top)
    return out


# GPTQ is most of the cost of a search trial (autotune, sweep) beside running the model, and a trial repeats
# it for every kernel it leaves as it was, once for the model it scores and once for the bytes it measures.
# So each rounding is remembered: by the weights' content and the identity of the statistics and units (held
# weakly: a search drops a setting's statistics, hundreds of MB on a large model, when it moves to the next;
# an entry whose statistics are gone is dropped), read-only, least recently used out.
ROUNDED_CACHE_BYTES = 256 << 20
_rounded = OrderedDict()


def quantize_calibrated(array, hessian, levels, qp=None, unit=None):
    """`gptq` codes and scales where `hessian` fits the array, else None (round to nearest instead).

    A 2-D hessian is shared by every output channel (Dense, convolutions); a stack of them, one per
    channel (c, k, k), belongs to a depthwise kernel (h, w, c, 1) whose channels each see their own input.
    The result is read-only: the same call again returns the same arrays.
    """
    if hessian is None:
        return None
    key = (content_key(array), id(hessian), levels, qp, id(unit))
    held = _rounded.get(key)
    if held is not None and _referent(held[0]) is hessian and _referent(held[1]) is unit:
        _rounded.move_to_end(key)
        return held[2]
    result = _quantize_calibrated(array, hessian, levels, qp, unit)
    if result is not None:
        for part in result:
            part.setflags(write=False)
        for stale in [k for k, (h, u, _) in _rounded.items() if h() is None or (u is not None and u() is None)]:
            del _rounded[stale]
        _rounded[key] = (weakref.ref(hessian), None if unit is None else weakref.ref(unit), result)
        while sum(sum(p.nbytes for p in r) for _, _, r in _rounded.values()) > ROUNDED_CACHE_BYTES:
            _rounded.popitem(last=False)
    return result


def _referent(ref):
    return None if ref is None else ref()


def _quantize_calibrated(array, hessian, levels, qp=None, unit=None):
    rows = array.size // array.shape[-1]
    axis = channel_axis(array.shape) if qp is None else ecq_axis(array.shape)
    if hessian.ndim == 2 and axis == array.ndim - 1 and hessian.shape == (rows, rows):
        return gptq(array, hessian, levels, qp=qp, unit=unit)
    if hessian.ndim == 3 and array.ndim == 4 and array.shape[-1] == 1 \
            and hessian.shape == (array.shape[2], array.shape[0] * array.shape[1], array.shape[0] * array.shape[1]):
        codes = np.empty(array.shape, np.int8 if qp is None else np.int32)
        scales = np.empty(array.shape[2], np.float32)
        for c in range(array.shape[2]):
            own = None if unit is None or np.shape(unit) != (array.shape[2],) else unit[c:c + 1]
            codes[:, :, c, :], (scales[c],) = gptq(array[:, :, c, :], hessian[c], levels, qp=qp, unit=own)
        return codes, scales
    return None


def halves_floats(values):
    """Whether a container storing `values` keeps its float tensors that are not quantized as float16: with
    float16, and with ecq (biases, batch norms: their rounding is three orders of magnitude below the kernels'
    at any useful QP, docs/methods.md)."""
    return values == "float16" or parse_values(values)[0] == "ecq"


def ecq_quantizes(array, unit):
    """Whether an ecq container stores this tensor as levels: a float kernel, or a vector with a measured unit."""
    return quantizable(array) or ecq_vector(array, unit)


def restored_values(array, values, hessian=None, unit=None):
    """The float array a container storing `values` gives back for `array` (what restore writes)."""
    kind, qp = parse_values(values)
    if kind == "ecq" and ecq_vector(array, unit):
        codes, scale = quantize_ecq(array, qp, unit=unit)
        return dequantize(codes, scale, array.dtype, None)
    if halves_floats(values) and not (kind == "ecq" and quantizable(array)):
        if array.dtype not in (np.float32, np.float64):
            return array
        finite = np.abs(array[np.isfinite(array)])
        if finite.size and finite.max() > np.finfo(np.float16).max:
            return array  # the container keeps such a tensor at full precision
        return array.astype(np.float16).astype(array.dtype)
    if not quantizable(array):
        return array
    if kind == "ecq":
        codes, scale = quantize_ecq(array, qp, hessian, unit)
        return dequantize(codes, scale, array.dtype, ecq_axis(array.shape))
    levels = {"int8": LEVELS[8], "int4": LEVELS[4]}[values]
    codes, scale = quantize_calibrated(array, hessian, levels) or quantize(array, levels)
    return dequantize(codes, scale, array.dtype, channel_axis(array.shape))
