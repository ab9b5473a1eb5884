"""Retraining-free sparsification (seed 004): one thresholding pass, three threshold rules.

S(w, τ) = 0 where |w| <= τ, per tensor. The rules differ only in how τ is chosen:
- flat:       τ = δ · σ_min, σ_min the smallest span (max − min) over eligible layers;
- triangular: τ rises linearly, by position in layer order, from σ_first·δ_conv to σ_last·δ_fc;
- relative:   τ = the δ-quantile of |w| in each tensor, so about δ of it becomes zero.
Tensors below a size floor (default: DEFAULT_MIN_SIZE weights, capped by FLOOR_MAX_SHARE) stay dense.
relative with --pattern N:M keeps the N largest |w| in every group of M along each kernel's inputs instead.
See docs/methods.md for where this departs from the paper's printed formulas, and why.
"""

import fnmatch

import numpy as np

from wcompress.errors import WcompressError, short_list, warn
from wcompress.hookspecs import hookimpl
from wcompress.formats.tensors import EMBEDDING, KERNEL, RECURRENT, quantized_layer_names
from wcompress.methods.passes import Pass
from wcompress.methods.pruning import keep_n_of_m, parse_pattern, pattern_fits

ELIGIBLE_ROLES = (KERNEL, RECURRENT, EMBEDDING)
_CHUNK = 1 << 20

# The default size floor: tensors with fewer weights than this stay dense. Small tensors are the
# ones a model can least afford to damage (a fusion conv averaging five side outputs, a 64→1 output
# layer, a 72-weight first conv) and the ones whose zeros save least. So that the floor never eats
# a small model's sparsity, it is lowered until what it skips holds at most FLOOR_MAX_SHARE of the
# eligible weights. Measured on the sample models in docs/methods.md ("Eligible tensors").
DEFAULT_MIN_SIZE = 1024
FLOOR_MAX_SHARE = 0.05


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


def default_floor(sizes, min_size=DEFAULT_MIN_SIZE, max_share=FLOOR_MAX_SHARE):
    """The default floor for tensors of these sizes: `min_size`, lowered to the largest size that
    leaves at most `max_share` of all their weights below it. Tensors with fewer weights stay dense."""
    budget = max_share * sum(sizes)
    floor = min_size
    while sum(s for s in sizes if s < floor) > budget:
        floor = max(s for s in sizes if s < floor)  # keep the largest size class the floor skipped
    return floor


def span(array):
    return float(array.max()) - float(array.min())


class ThresholdPass(Pass):
    """Zero weights with |w| <= τ. `rule` is flat, triangular or relative."""

    family = "sparsify"

    def __init__(self, rule):
        self.name = rule
        self.rule = rule
        self.per_tensor = rule == "relative"  # thresholds from each tensor alone, not from the whole model
        self.takes_pattern = rule == "relative"  # --pattern N:M keeps the largest |w| of each group
        self.help = {
            "flat": "One threshold for all layers: δ × the smallest layer span.",
            "triangular": "Thresholds rising from the first layer (δ_conv × its span) to the last (δ_fc × its span).",
            "relative": "Per layer, the δ-quantile of |w|: about δ of each layer becomes zero.",
        }[rule]
        self.configure()

    def configure(self, delta=None, dconv=None, dfc=None, sparsity=None, include=(), exclude=(), layers=(),
                  plan=None, min_size=None, pattern=None):
        """min_size: None for the default floor (see default_floor), N to keep tensors with fewer than
        N weights dense (0: no floor). pattern: 'N:M' (relative, wanda, sparsegpt), which fixes the sparsity."""
        if sparsity is not None and delta is not None:
            raise WcompressError("give --delta or --sparsity, not both")
        self.pattern = parse_pattern(pattern)
        if self.pattern is not None:
            if self.rule in ("flat", "triangular"):
                raise WcompressError(f"--pattern keeps the largest weights of each group: use relative (or wanda, "
                                     f"sparsegpt), not {self.rule}")
            if delta is not None or sparsity is not None or layers or plan is not None:
                raise WcompressError(f"--pattern {pattern} fixes the sparsity at {1 - self.pattern[0] / self.pattern[1]:g}:"
                                     " leave out --sparsity/--delta, --layer and --plan")
        self.pattern_skipped = []
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
        if min_size is not None and (int(min_size) != min_size or min_size < 0):
            raise WcompressError(f"--min-size must be a whole number of weights, 0 or more, got {min_size}")
        self.min_size = None if min_size is None else int(min_size)
        # The floor in effect: an explicit one at once, the default rule's once prepare() has seen the model.
        self.floor = self.min_size or 0
        self.skipped_small = {}
        self.plan = plan
        self.thresholds = {}
        self.counts = {}

    def _validate(self):
        if self.plan is not None or self.pattern is not None:
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
        """Whether this pass sparsifies the tensor. The default size floor needs the whole model, so it
        applies once prepare() has run; before that (or with --include) only an explicit --min-size does."""
        return self._selected(info) and info.size >= self.floor

    def _selected(self, info):
        """The selection before the size floor: role or --include, less --exclude, float, more than one element."""
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
        selected = [t for t in source.tensors if self._selected(t)]
        if self.plan is not None:
            self.floor = 0  # the plan names its tensors: the floor was applied when it was made
        elif self.min_size is None:
            # Tensors named by --include are the user's choice, whatever their size.
            self.floor = 0 if self.include else default_floor([t.size for t in selected])
        chosen = [t for t in selected if t.size >= self.floor]
        below = [t for t in selected if t.size < self.floor]
        self.skipped_small = {t.name: int(t.size) for t in below}
        already = quantized_layer_names(source.tensors)
        if not chosen and already and not self.include:
            raise WcompressError(f"every kernel is already quantized ({short_list(already)}): their integer "
                                 "codes are not weights to threshold; sparsify the float model, then quantize",
                                 source.path)
        if not chosen:
            raise WcompressError("no eligible tensor to sparsify (kernels, recurrent kernels, embeddings; "
                                 "see --include/--exclude" + ("/--min-size)" if self.skipped_small else ")"))
        if already and not self.include:
            warn(f"left alone: {len(already)} already-quantized layers ({short_list(already)}), whose integer codes "
                 "are not weights to threshold", source.path)
        self._warn_overrides_below_floor(chosen, below)
        self.eligible_names = {t.name for t in chosen}
        if self.plan is not None:
            missing = sorted(set(self.plan) - {t.name for t in source.tensors})
            if missing:
                raise WcompressError(f"plan names tensors the model does not have: {', '.join(missing[:5])}")
            self.eligible_names = set(self.plan)
            self.thresholds = dict(self.plan)
            return
        if self.per_tensor:
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

    def _warn_overrides_below_floor(self, chosen, below):
        """A --layer override that only names tensors the floor keeps dense would silently do nothing."""
        def matches(pattern, info):
            return fnmatch.fnmatchcase(info.name, pattern) or fnmatch.fnmatchcase(info.layer, pattern)

        for pattern, _ in self.layer_deltas:
            small = [t.name for t in below if matches(pattern, t)]
            if small and not any(matches(pattern, t) for t in chosen):
                warn(f"--layer {pattern} names only tensors below the size floor of {self.floor:,} weights, "
                     f"which stay dense ({', '.join(small[:3])}); --include or --min-size 0 sparsifies them")

    def threshold_for(self, info, array):
        if info.name not in self.thresholds:
            delta = self._override(info)
            self.thresholds[info.name] = quantile_threshold(array, self.delta if delta is None else delta)
        return self.thresholds[info.name]

    def apply(self, info, array):
        if info.name not in self.eligible_names:
            return array
        if self.pattern is not None:
            return self.apply_pattern(info, array, np.abs)
        tau = self.threshold_for(info, array)
        out = array if array.flags.writeable else array.copy()  # the runner hands us a fresh copy
        flat, zeros = out.reshape(-1), 0
        for start in range(0, flat.size, _CHUNK):  # chunked: temporaries stay small
            chunk = flat[start:start + _CHUNK]
            chunk[np.abs(chunk) <= tau] = 0
            zeros += int(np.count_nonzero(chunk == 0))
        self.counts[info.name] = (zeros, int(out.size))
        return out

    def apply_pattern(self, info, array, score):
        """Keep the N highest score(weights) of every group of M input rows; a kernel whose inputs are not
        a multiple of M stays dense (listed as pattern_skipped). score maps the (inputs x outputs) view."""
        if not pattern_fits(array.shape, self.pattern):
            self.pattern_skipped.append(info.name)
            return array
        weights = array.reshape(-1, array.shape[-1])
        keep = keep_n_of_m(score(weights), self.pattern)
        out = np.where(keep, weights, 0).astype(array.dtype)
        self.record(info, out, float(np.max(score(weights)[~keep])) if (~keep).any() else 0.0)
        return out.reshape(array.shape)

    def record(self, info, out, threshold):
        self.thresholds[info.name] = threshold
        self.counts[info.name] = (int(out.size - np.count_nonzero(out)), int(out.size))

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
            "min_size": self.floor,
            "skipped_small": dict(self.skipped_small),
            **({"pattern": "%d:%d" % self.pattern, "pattern_skipped": sorted(self.pattern_skipped)}
               if self.pattern else {}),
        }

    def plan_document(self):
        """What --dry-run writes and --plan reads back: exact thresholds per tensor (with a pattern: the
        pattern and the tensors it applies to)."""
        if self.pattern is not None:
            return {"method": self.rule, "pattern": "%d:%d" % self.pattern, "tensors": sorted(self.counts)}
        return {"method": self.rule, "thresholds": {k: float(v) for k, v in self.thresholds.items()}}


@hookimpl
def register_passes(register):
    for rule in ("flat", "triangular", "relative"):
        register(ThresholdPass(rule))
