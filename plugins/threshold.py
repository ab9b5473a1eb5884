"""Retraining-free sparsification (seed 004): one thresholding pass, three threshold rules.

S(w, τ) = 0 where |w| <= τ, per tensor. The rules differ only in how τ is chosen:
- flat:       τ = δ · σ_min, σ_min the smallest span (max − min) over eligible layers;
- triangular: τ rises linearly, by position in layer order, from σ_first·δ_conv to σ_last·δ_fc;
- relative:   τ = the δ-quantile of |w| in each tensor, so about δ of it becomes zero.
See docs/methods.md for where this departs from the paper's printed formulas, and why.
"""

import fnmatch

import numpy as np

from wcompress.errors import WcompressError
from wcompress.hookspecs import hookimpl
from wcompress.io.tensors import EMBEDDING, KERNEL, RECURRENT
from wcompress.passes import Pass

ELIGIBLE_ROLES = (KERNEL, RECURRENT, EMBEDDING)
_CHUNK = 1 << 20


def _check_fraction(name, value):
    if value is None:
        return None
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise WcompressError(f"{name} must be in [0, 1], got {value}")
    return value


def quantile_threshold(array, fraction):
    """The k-th smallest |w| with k = floor(fraction · n): linear-time selection, no full sort."""
    k = int(np.floor(fraction * array.size))
    if k <= 0:
        return -1.0  # nothing to zero: below every |w|
    magnitudes = np.abs(array.reshape(-1))
    magnitudes.partition(k - 1)  # in place: np.partition would make another full copy
    return float(magnitudes[k - 1])


def span(array):
    return float(array.max()) - float(array.min())


class ThresholdPass(Pass):
    """Zero weights with |w| <= τ. `rule` is flat, triangular or relative."""

    family = "sparsify"

    def __init__(self, rule):
        self.name = rule
        self.rule = rule
        self.help = {
            "flat": "One threshold for all layers: δ × the smallest layer span.",
            "triangular": "Thresholds rising from the first layer (δ_conv × its span) to the last (δ_fc × its span).",
            "relative": "Per layer, the δ-quantile of |w|: about δ of each layer becomes zero.",
        }[rule]
        self.configure()

    def configure(self, delta=None, dconv=None, dfc=None, sparsity=None, include=(), exclude=(), layers=(),
                  plan=None):
        if sparsity is not None and delta is not None:
            raise WcompressError("give --delta or --sparsity, not both")
        self.delta = _check_fraction("--delta", delta if delta is not None else sparsity)
        self.dconv = _check_fraction("--dconv", dconv)
        self.dfc = _check_fraction("--dfc", dfc)
        self.include, self.exclude = tuple(include), tuple(exclude)
        self.layer_deltas = []
        for spec in layers:
            pattern, sep, value = spec.rpartition("=")
            if not sep or not pattern:
                raise WcompressError(f"--layer takes GLOB=DELTA, got {spec!r}")
            try:
                self.layer_deltas.append((pattern, _check_fraction(f"--layer {pattern}", value)))
            except ValueError as exc:
                raise WcompressError(f"--layer takes GLOB=DELTA, got {spec!r}") from exc
        self.plan = plan
        self.thresholds = {}
        self.counts = {}

    def _validate(self):
        if self.plan is not None:
            return
        if self.rule == "triangular":
            if (self.dconv is None) != (self.dfc is None):
                raise WcompressError("triangular needs both --dconv and --dfc")
            if self.dconv is None:
                raise WcompressError("triangular needs --dconv and --dfc")
            if self.delta is not None:
                raise WcompressError("triangular takes --dconv and --dfc, not --delta")
        else:
            if self.dconv is not None or self.dfc is not None:
                raise WcompressError(f"--dconv/--dfc are for the triangular method, not {self.rule}")
            if self.delta is None:
                raise WcompressError(f"{self.rule} needs --delta" + (" or --sparsity" if self.rule == "relative" else ""))

    def eligible(self, info):
        names = (info.name, info.layer)
        if self.include:
            if not any(fnmatch.fnmatchcase(n, g) for n in names for g in self.include):
                return False
        elif info.role not in ELIGIBLE_ROLES:
            return False
        if any(fnmatch.fnmatchcase(n, g) for n in names for g in self.exclude):
            return False
        return info.is_float and info.size > 1

    def _override(self, info):
        for pattern, value in self.layer_deltas:
            if fnmatch.fnmatchcase(info.name, pattern) or fnmatch.fnmatchcase(info.layer, pattern):
                return value
        return None

    def prepare(self, source):
        self._validate()
        self.thresholds, self.counts = {}, {}
        chosen = [t for t in source.tensors if self.eligible(t)]
        if not chosen:
            raise WcompressError("no eligible tensor to sparsify (kernels, recurrent kernels, embeddings; "
                                 "see --include/--exclude)")
        self.eligible_names = {t.name for t in chosen}
        if self.plan is not None:
            missing = sorted(set(self.plan) - {t.name for t in source.tensors})
            if missing:
                raise WcompressError(f"plan names tensors the model does not have: {', '.join(missing[:5])}")
            self.eligible_names = set(self.plan)
            self.thresholds = dict(self.plan)
            return
        if self.rule == "relative":
            return  # per tensor, computed in apply(): the tensor is loaded once
        spans = {}
        for info in chosen:
            array = source.load(info.name)
            spans.setdefault(info.layer, []).append((float(array.min()), float(array.max())))
        layer_span = {layer: max(h for _, h in v) - min(lo for lo, _ in v) for layer, v in spans.items()}
        layers = list(dict.fromkeys(t.layer for t in chosen))  # layer order
        if self.rule == "flat":
            sigma_min = min(layer_span.values())
            for info in chosen:
                delta = self._override(info)
                self.thresholds[info.name] = sigma_min * (self.delta if delta is None else delta)
        else:
            first = layer_span[layers[0]] * self.dconv
            last = layer_span[layers[-1]] * self.dfc
            steps = max(1, len(layers) - 1)
            position = {layer: i for i, layer in enumerate(layers)}
            for info in chosen:
                delta = self._override(info)
                if delta is not None:
                    self.thresholds[info.name] = layer_span[info.layer] * delta
                else:
                    self.thresholds[info.name] = first + (last - first) * position[info.layer] / steps

    def threshold_for(self, info, array):
        if info.name not in self.thresholds:
            delta = self._override(info)
            self.thresholds[info.name] = quantile_threshold(array, self.delta if delta is None else delta)
        return self.thresholds[info.name]

    def apply(self, info, array):
        if info.name not in self.eligible_names:
            return array
        tau = self.threshold_for(info, array)
        out = array if array.flags.writeable else array.copy()  # the runner hands us a fresh copy
        flat, zeros = out.reshape(-1), 0
        for start in range(0, flat.size, _CHUNK):  # chunked: temporaries stay small
            chunk = flat[start:start + _CHUNK]
            chunk[np.abs(chunk) <= tau] = 0
            zeros += int(np.count_nonzero(chunk == 0))
        self.counts[info.name] = (zeros, int(out.size))
        return out

    def summary(self):
        zeros = sum(z for z, _ in self.counts.values())
        total = sum(n for _, n in self.counts.values())
        return {
            "method": self.rule,
            "thresholds": dict(self.thresholds),
            "sparsity": {k: z / n for k, (z, n) in self.counts.items()},
            "eligible_sparsity": zeros / total if total else 0.0,
            "zeros": zeros,
            "eligible_params": total,
        }

    def plan_document(self):
        """What --dry-run writes and --plan reads back: exact thresholds per tensor."""
        return {"method": self.rule, "thresholds": {k: float(v) for k, v in self.thresholds.items()}}


@hookimpl
def register_passes(register):
    for rule in ("flat", "triangular", "relative"):
        register(ThresholdPass(rule))
