"""wanda: zero the weights with the lowest |w| x ||x_j|| in each output channel (Sun, Liu, Bair & Kolter,
"A Simple and Effective Pruning Approach for Large Language Models", ICLR 2024), no retraining.

||x_j|| is the norm of input j of the kernel's layer over calibration inputs (`sparsify --data`), taken
from the statistics wcompress/runtime/capture.py collects (sqrt of the diagonal of X^T X / n: the common
1/n does not change the order within a layer). A kernel is read as (inputs, outputs) like the capture
reads it (a convolution's rows are im2col patch positions); in every output channel (`groups="row"`,
Wanda's default) or over the whole tensor (`groups="layer"`), the floor(δ · n) lowest scores are
zeroed. Selection and the size floor are those of the threshold methods; kernels the capture does not
cover (recurrent, depthwise, embeddings) stay dense and are listed. `sparsegpt` (below) zeroes by the
same statistics and updates the weights it keeps.
"""

import numpy as np

from wcompress.errors import WcompressError
from wcompress.hookspecs import hookimpl
from wcompress.methods.pruning import pattern_fits, sparsegpt
from wcompress.formats.container.quantization import channel_axis

from .threshold import ThresholdPass, _check_fraction


class WandaPass(ThresholdPass):
    needs_calibration = True

    def __init__(self):
        self.name = self.rule = "wanda"
        self.per_tensor = self.takes_pattern = True
        self.help = "Per output channel, zero the lowest |w| x ||input||, from calibration inputs (--data)."
        self.configure()

    def configure(self, delta=None, sparsity=None, include=(), exclude=(), min_size=None, hessians=None, groups="row",
                  dconv=None, dfc=None, layers=(), plan=None, pattern=None):
        """`hessians`: the capture's X^T X / n per kernel (wcompress/runtime/capture.py)."""
        if dconv is not None or dfc is not None or plan is not None:
            raise WcompressError(f"{self.name} takes --sparsity (or --delta), --layer, --include/--exclude and "
                                 "--min-size; not --dconv/--dfc or --plan")
        if groups not in ("row", "layer"):
            raise WcompressError(f"--groups takes row or layer, not {groups!r}")
        if pattern is not None and groups != "row":
            raise WcompressError("--pattern chooses within groups of inputs: --groups layer does not apply")
        super().configure(delta=delta, sparsity=sparsity, include=include, exclude=exclude, min_size=min_size,
                          layers=layers, pattern=pattern)
        self.hessians, self.norms, self.groups = dict(hessians or {}), _norms(hessians or {}), groups
        self.uncalibrated = []

    def _validate(self):
        _check_fraction("--sparsity", self.delta)
        if self.delta is None and self.pattern is None:
            raise WcompressError(f"{self.name} needs --sparsity (the fraction of each kernel to zero) or --pattern N:M")
        if not self.norms:
            raise WcompressError(f"{self.name} scores weights by their inputs: give calibration inputs with --data "
                                 "CALIB.npz")

    def prepare(self, source):
        super().prepare(source)  # selection and size floor; scores are per tensor (per_tensor)
        self.uncalibrated = []

    def _outside_pattern(self, info, array):
        if self.pattern is not None and not pattern_fits(array.shape, self.pattern):
            self.pattern_skipped.append(info.name)
            return True
        return False

    def apply(self, info, array):
        if info.name not in self.eligible_names or self._outside_pattern(info, array):
            return array
        norms = self.norms.get(info.name)
        if norms is None or channel_axis(array.shape) != array.ndim - 1 \
                or norms.shape != (array.size // array.shape[-1],):
            self.uncalibrated.append(info.name)
            return array
        if self.pattern is not None:
            return self.apply_pattern(info, array, lambda w: np.abs(w).astype(np.float64) * norms[:, None])
        weights = array.reshape(-1, array.shape[-1])
        scores = np.abs(weights).astype(np.float64) * norms[:, None]
        out = weights.copy()
        delta = self.sparsity_for(info)
        if self.groups == "row":
            k = int(np.floor(delta * weights.shape[0]))
            if k:
                lowest = np.argpartition(scores, k - 1, axis=0)[:k]  # per output channel
                np.put_along_axis(out, lowest, 0, axis=0)
                self.thresholds[info.name] = float(np.mean(np.take_along_axis(scores, lowest, 0).max(axis=0)))
        else:
            k = int(np.floor(delta * weights.size))
            if k:
                lowest = np.argpartition(scores.reshape(-1), k - 1)[:k]
                out.reshape(-1)[lowest] = 0
                self.thresholds[info.name] = float(scores.reshape(-1)[lowest].max())
        self.thresholds.setdefault(info.name, 0.0)
        self.counts[info.name] = (int(out.size - np.count_nonzero(out)), int(out.size))
        return out.reshape(array.shape)

    def sparsity_for(self, info):
        """δ for this tensor: its --layer override, or --sparsity."""
        override = self._override(info)
        return self.delta if override is None else override

    def summary(self):
        return {**super().summary(), "method": self.name, "groups": self.groups,
                "uncalibrated": sorted(self.uncalibrated)}

    def plan_document(self):
        raise WcompressError(f"{self.name}'s choice depends on calibration inputs, not thresholds: it writes no plan")


def _norms(hessians):
    """Per-input norms (up to one factor per layer) from the capture's X^T X / n of each 2-D kernel input."""
    return {name: np.sqrt(np.clip(np.diag(h), 0, None)) for name, h in hessians.items() if h.ndim == 2}


class SparseGPTPass(WandaPass):
    """sparsegpt: SparseGPT's prune-and-update (wcompress/methods/pruning.py): in each block of 128 input rows the
    weights with the lowest OBS saliency are zeroed and the rest updated to make up for them on the
    calibration inputs. The kept weights change (a plan cannot replay it; the output is the result)."""

    def __init__(self):
        self.name = self.rule = "sparsegpt"
        self.per_tensor = self.takes_pattern = True
        self.help = "Zero and update weights from their layer's input Hessian (SparseGPT), from calibration inputs."
        self.configure()

    def configure(self, **options):
        if options.get("groups", "row") != "row":
            raise WcompressError("sparsegpt chooses its zeros per block of inputs: --groups is for wanda")
        super().configure(**options)

    def apply(self, info, array):
        if info.name not in self.eligible_names or self._outside_pattern(info, array):
            return array
        hessian = self.hessians.get(info.name)
        rows = array.size // array.shape[-1]
        if hessian is None or hessian.ndim != 2 or channel_axis(array.shape) != array.ndim - 1 \
                or hessian.shape != (rows, rows):
            self.uncalibrated.append(info.name)
            return array
        out = sparsegpt(array, hessian, self.sparsity_for(info), pattern=self.pattern)
        self.record(info, out, 0.0)
        return out


@hookimpl
def register_passes(register):
    register(WandaPass())
    register(SparseGPTPass())
