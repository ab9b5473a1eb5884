"""Symmetric per-output-channel integer quantization (round to nearest), shared by the container's
`--values int8|int4` and the `quantize` pass.

For a float tensor of rank >= 2, channel c of its last axis (the output channel of Keras and TF
kernels) gets scale_c = max|w[..., c]| / L (1 for an all-zero channel) and codes
round(w / scale_c) clipped to ±L, L = 127 for 8 bits and 7 for 4 bits; the value is codes x scale.
"""

import numpy as np

LEVELS = {8: 127, 4: 7}


def quantize(array, levels):
    """(int8 codes of the array's shape, float32 scale per channel of the last axis)."""
    flat = array.reshape(-1, array.shape[-1]).astype(np.float32, copy=False)
    top = np.abs(flat).max(axis=0)
    scale = np.where(top > 0, top / levels, 1.0).astype(np.float32)
    codes = np.clip(np.rint(flat / scale), -levels, levels).astype(np.int8)
    return codes.reshape(array.shape), scale


def dequantize(codes, scale, dtype):
    return (codes.astype(np.float32) * scale).astype(dtype, copy=False)


def quantizable(array):
    return array.dtype.kind == "f" and array.ndim >= 2 and array.size > 0


class QuantizedCodes(np.ndarray):
    """Integer codes that stand for codes x `scale` (float32, one per channel of the last axis): what the
    `quantize` pass hands a writer that stores codes and dequantizes where the model reads them."""

    def __new__(cls, codes, scale):
        obj = np.asarray(codes).view(cls)
        obj.scale = scale
        return obj

    def __array_finalize__(self, obj):
        self.scale = getattr(obj, "scale", None)
