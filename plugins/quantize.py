"""quantize: kernels as 8-bit integer codes with a float32 scale per output channel (seed 000's future
work), in a checkpoint the user's own graph still loads.

TF1 checkpoints with their .meta: every float tensor of rank >= 2 becomes an int8 variable, and the
graph reads it through a Cast and a Mul by a Const of its scales (wcompress/formats/tf1_meta.py), so
stock import_meta_graph + Saver.restore runs it. Training state is dropped: a quantized model is for
inference. With calibration statistics (`hessians`, from `--data`), each kernel's rounding error is
compensated GPTQ-style (wcompress/formats/container/quantization.py); kernels no product reads directly are rounded to
nearest. Other formats are refused for now: `wcompress pack --values int8|int4` quantizes any of
them into the container.
"""

import numpy as np

from wcompress.errors import WcompressError, short_list, warn
from wcompress.hookspecs import hookimpl
from wcompress.formats import TRAINING_STATE
from wcompress.formats.tensors import quantized_layer_names
from wcompress.methods.passes import Pass
from wcompress.formats.container.quantization import (
    LEVELS, QuantizedCodes, broadcast_scale, channel_axis, quantizable, quantize, quantize_calibrated)


class QuantizePass(Pass):
    name = "quantize"
    help = "Store kernels as int8 codes with per-channel scales, dequantized where the graph reads them."

    def configure(self, bits=8, hessians=None):
        if bits not in LEVELS:
            raise WcompressError(f"--bits takes 8 or 4, not {bits}")
        if bits != 8:
            raise WcompressError("4-bit codes need a container to pay off (TensorFlow variables hold whole bytes): "
                                 "use `wcompress pack --values int4`")
        self.bits, self.quantized, self.hessians = bits, {}, hessians or {}

    def prepare(self, source):
        if source.format != "tf1-checkpoint" or not getattr(source, "has_meta_graph", False):
            raise WcompressError("quantize rewrites TF1 checkpoints with their .meta graph; for other formats use "
                                 "`wcompress pack --values int8` (the container, restored dequantized)", source.path)
        self.quantized, self.compensated = {}, []
        already = quantized_layer_names(source.tensors)
        floats = [t for t in source.tensors if t.role not in TRAINING_STATE and t.is_float and len(t.shape) >= 2]
        if already and not floats:
            raise WcompressError(f"already quantized: every kernel holds integer codes ({short_list(already)})",
                                 source.path)
        if already:
            warn(f"left alone: {len(already)} already-quantized layers ({short_list(already)})", source.path)

    def apply(self, info, array):
        if info.role in TRAINING_STATE:
            return None
        if not quantizable(array) or np.dtype(array.dtype) != np.float32:
            return array
        calibrated = quantize_calibrated(array, self.hessians.get(info.name), LEVELS[self.bits])
        if calibrated is not None:
            self.compensated.append(info.name)
        codes, scale = calibrated or quantize(array, LEVELS[self.bits])
        self.quantized[info.name] = info.nbytes
        return QuantizedCodes(codes, broadcast_scale(scale, codes.ndim, channel_axis(codes.shape)))

    def summary(self):
        before = sum(self.quantized.values())
        return {"bits": self.bits, "quantized_tensors": sorted(self.quantized), "quantized_bytes_before": before,
                "quantized_bytes_after": before // 4, "calibrated_tensors": sorted(self.compensated)}


@hookimpl
def register_passes(register):
    register(QuantizePass())
