"""fp16: cast the largest float32 tensors to float16 (seed 000: 4 of 32 tensors held 98% of the bytes).

bfloat16 tensors the selection names are cast too (same bytes, for devices that run float16 only):
every bfloat16 value within float16's range converts exactly or to a float16 subnormal, and one beyond
it refuses the command unless --on-overflow clip. The codes and scales of layers already quantized are
left as they are and listed. Training state (optimizer slots, step counters) is dropped: a cast model
is for inference.
"""

import fnmatch

import numpy as np

from wcompress.errors import WcompressError, short_list, warn
from wcompress.hookspecs import hookimpl
from wcompress.formats import TRAINING_STATE
from wcompress.formats.dtypes import BFLOAT16
from wcompress.formats.tensors import QUANTIZATION, quantized_layer_names
from wcompress.methods.passes import Pass

FP16_MAX = float(np.finfo(np.float16).max)


def covering(tensors, fraction):
    """The fewest tensors, largest first, whose bytes reach `fraction` of all their bytes."""
    ranked = sorted(tensors, key=lambda t: t.nbytes, reverse=True)
    total, running, chosen = sum(t.nbytes for t in tensors), 0, []
    for t in ranked:
        if running >= fraction * total:
            break
        chosen.append(t)
        running += t.nbytes
    return chosen


def _refuse_unloadable(source):
    """Checkpoints that come without a graph are restored by the user's own float32 model, and
    TensorFlow's restore (RestoreV2) accepts only the variable's own dtype: float16 storage there
    would not load, so refuse before anything is written and say what works instead."""
    instead = "for float16 storage use `wcompress pack --values float16`"
    if source.format == "tf2-checkpoint":
        raise WcompressError("a TF2 object checkpoint restores only into variables of its stored dtype, so a "
                             f"float32 model cannot restore float16 tensors; {instead}, or save the model as "
                             ".keras and run fp16 on that", source.path)
    if source.format == "tf1-checkpoint" and not source.has_meta_graph:
        raise WcompressError("a TF1 checkpoint without its .meta graph restores only into variables of its "
                             f"stored dtype; keep the .meta beside it so the graph is rewritten, or {instead}",
                             source.path)


class Float16Pass(Pass):
    name = "fp16"
    help = "Cast the largest float32 tensors to float16; drop training state."

    def configure(self, cover=None, min_bytes=None, tensors=(), on_overflow="keep"):
        if sum(x is not None and x != () for x in (cover, min_bytes, tensors or None)) > 1:
            raise WcompressError("give one of --cover, --min-bytes, --tensors")
        if cover is not None and not 0 < cover <= 1:
            raise WcompressError(f"--cover must be in (0, 1], got {cover}")
        if on_overflow not in ("keep", "clip"):
            raise WcompressError(f"--on-overflow takes keep or clip, not {on_overflow!r}")
        self.cover = 0.98 if cover is None and min_bytes is None and not tensors else cover
        self.min_bytes, self.patterns, self.on_overflow = min_bytes, tuple(tensors), on_overflow
        self.chosen, self.overflow, self.cast, self.cast_after, self.inexact = set(), {}, {}, {}, {}

    def prepare(self, source):
        _refuse_unloadable(source)
        model = [t for t in source.tensors if t.role not in TRAINING_STATE]
        quantized = quantized_layer_names(model, QUANTIZATION)
        model = [t for t in model if t.layer not in quantized]  # a layer's dtype policy is one: Keras's own
        floats = [t for t in model if np.dtype(t.dtype) in (np.float32, BFLOAT16)]
        if quantized and not model:
            raise WcompressError(f"every layer with weights is already quantized ({short_list(quantized)}): "
                                 "float16 would only cast the scales their integer codes need", source.path)
        if quantized:
            warn(f"left alone: {len(quantized)} already-quantized layers, their integer codes, scales and biases "
                 f"({short_list(quantized)})", source.path)
        if self.patterns:
            picked = [t for t in floats if self._named(t)]
        elif self.min_bytes is not None:
            picked = [t for t in floats if t.nbytes >= self.min_bytes]
        else:
            picked = [t for t in covering(model, self.cover) if t in floats]
        if not picked:
            raise WcompressError(self._nothing_to_cast(model))
        if source.casts_whole_layers:
            layers = {t.layer for t in picked}
            picked = [t for t in floats if t.layer in layers]
        self.chosen = {t.name for t in picked}
        self.overflow, self.cast, self.cast_after, self.inexact = {}, {}, {}, {}

    def apply(self, info, array):
        if info.role in TRAINING_STATE:
            return None
        if info.name not in self.chosen:
            return array
        finite = np.isfinite(array)
        over = int(np.count_nonzero(np.abs(array[finite]) > FP16_MAX)) if array.size else 0
        bfloat16 = array.dtype == BFLOAT16
        if over:
            self.overflow[info.name] = over
            if self.on_overflow == "keep" and bfloat16:
                raise WcompressError(f"{info.layer} {info.role} ({info.name}) holds {over:,} bfloat16 values beyond "
                                     f"float16's range (±{FP16_MAX:g}): pass --on-overflow clip, or leave it out "
                                     "with --tensors")
            if self.on_overflow == "keep":
                return array
            array = np.where(finite, np.clip(array, -FP16_MAX, FP16_MAX), array)
        half = array.astype(np.float16)
        if bfloat16:
            # Exact in float16's normal range (fewer mantissa bits); tiny values become subnormals or 0.
            changed = int(np.count_nonzero(half.astype(np.float32) != array.astype(np.float32)))
            if changed:
                self.inexact[info.name] = changed
        self.cast[info.name], self.cast_after[info.name] = info.nbytes, half.nbytes
        return half

    def _named(self, info):
        return any(fnmatch.fnmatchcase(n, p) for p in self.patterns for n in (info.name, info.layer))

    def _nothing_to_cast(self, model):
        """Why nothing was selected: say so when the selection names only float16 tensors."""
        halves = [t for t in model if np.dtype(t.dtype) == np.float16]
        named = [t for t in halves if self._named(t)]
        if named or (halves and not self.patterns and all(not t.is_float or t in halves for t in model)):
            return ("the selected tensors are already float16; `wcompress pack` codes them losslessly in fewer "
                    "bytes")
        return "no float32 or bfloat16 tensor selected for float16"

    def summary(self):
        return {"cast_tensors": sorted(self.cast), "cast_bytes_before": sum(self.cast.values()),
                "cast_bytes_after": sum(self.cast_after.values()),
                "bfloat16_values_changed": self.inexact,
                "overflow": self.overflow, "on_overflow": self.on_overflow}


@hookimpl
def register_passes(register):
    register(Float16Pass())
