"""autotune: the sparsest model (or the smallest container) whose metric stays within a budget on
examples the search never saw.

1. The examples are split: the search sees the tuning part only; the held-out part (or --validation)
   judges the result, and the written model meets the budget there.
2. Uniform start, every method: each method's δ is found for a ladder of sparsity levels (cheap: no
   prediction), the levels are evaluated upwards until one fails, then bisected. The best of all
   methods is the start.
3. Per layer: each eligible layer is moved alone to levels around its sparsity in the start and the
   change of the metric measured (sensitivity); allocations trading weights zeroed against measured
   drop, from cautious to aggressive, are bisected for the most aggressive that holds, then single
   raises are tried one at a time, most weights per unit of drop first.
Every state is a set of exact thresholds, so the written plan replays bit for bit with `sparsify --plan`.

With --pattern N:M the states are which layers take the pattern (the others stay dense): every eligible
layer first; if that fails the budget, each layer alone is measured, and the layers are added most weights
per unit of drop first (the longest run that holds, bisected, then every other layer tried one at a time).
The plan names the pattern and its tensors.
"""

import os
import tempfile
import time

import numpy as np

from wcompress.errors import WcompressError, warn
from wcompress.formats import TRAINING_STATE, open_model
from wcompress.formats.container.quantization import QP_RANGE, ecq_values, parse_values
from wcompress.formats.outputs import native_suffix, suffix_format
from wcompress.runtime.user_code import custom_object_scope
from wcompress.workflows.metrics import budget_margin, margin_error, within_budget
from wcompress.methods.plan import literal_glob, pattern_selection
from wcompress.progress import evaluation_progress
from wcompress.methods.runner import run_in_memory
from wcompress.workflows.scoring import split_examples
from wcompress.workflows.variants import (
    Variant, calibration_hessians, dense_score, evaluator_for, needs_calibration, packed_bytes, score_variant)
from wcompress.workflows.pools import open_pool

LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95]  # fractions of the eligible weights
# Per-layer levels, around each layer's sparsity in the uniform start (points of the layer's weights): the
# start sits at the edge of the budget, so what matters is what each layer gives or costs near it.
LAYER_STEPS = (-0.2, -0.1, 0.05, 0.1, 0.2, 0.3)
DELTA_PROBES = [0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6,
                0.7, 0.8, 0.9, 1.0]
MIN_HELD_OUT = 10  # fewer held-out examples than this would judge nothing
HELD_OUT_RESAMPLES = 200  # bootstrap resamples of the held-out part: the standard error of a state's margin
# ecq's QP: searched within these bounds, walked 4 at a time (each step of 4 doubles every channel's step).
ECQ_QP_SEARCH = (-16, 32)
ECQ_QP_STRIDE = 4
# The walk starts at QP 0 (~2.5 bits per weight), where every model measured holds (fer barely): each QP costs
# a pass of statistics layer by layer, and on a large model two passes spent below 0 were most of a short
# search (MTT_vgg, 5 minutes: QP 0 reached from -8; from 0, QP 4 at 0.74 of the bytes).
ECQ_QP_FIRST = 0
# Sensitivity probes: each layer alone this much coarser than the uniform edge; offsets kept within ±12.
ECQ_PROBE_ABOVE = 8
ECQ_MAX_OFFSET = 12


def sparsifier_methods(calibrated=False):
    """Every registered sparsification method (flat, triangular, relative, and plugins' ones); with
    `calibrated`, also those that score weights by calibration inputs (wanda, sparsegpt), which need data
    the search does not otherwise pass them."""
    from wcompress.plugins import get_passes

    return [name for name, p in get_passes().items() if getattr(p, "family", None) == "sparsify"
            and (calibrated or not getattr(p, "needs_calibration", False))]


class Search:
    """State shared by the phases: the parts of the data, the budget, the pool and the progress bar."""

    def __init__(self, model, tune, held, max_drop, relative, target, selection, pool, advance, max_evals,
                 values="float32", calibration=None, deadline=None):
        self.model, self.tune, self.held = model, tune, held
        self.values, self.calibration = values, calibration  # how the container stores values (per start)
        self._sizes = {t.name: t.size for t in evaluator_for(tune).loaded(model).store.tensors}
        self.max_drop, self.relative, self.target = max_drop, relative, target
        self.selection, self.pool, self.advance, self.max_evals = selection, pool, advance, max_evals
        self.base, self.metric = dense_score(model, tune)
        self.store = evaluator_for(tune).loaded(model).store
        self.evaluations = 1
        self.best = None
        self.seen = {}
        self.uniform_variants = set()  # the same setting on every layer: what the tuned state is compared with
        self.deadline = deadline  # time.monotonic() after which no new evaluation starts (--time-limit)
        self.stopped_by = None  # "evaluations" or "time limit", once either ends the search early

    def exhausted(self):
        """Whether the search may start no more evaluations (--max-evals or --time-limit reached)."""
        if self.evaluations >= self.max_evals:
            self.stopped_by = self.stopped_by or "evaluations"
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            self.stopped_by = self.stopped_by or "time limit"
        return self.stopped_by is not None

    # --- scoring ---
    def ok(self, row):
        return within_budget(self.metric, row["value"], self.base, self.max_drop, self.relative)

    def objective(self, row):
        return -row["packed_bytes"] if self.target == "bytes" else row["sparsity"]

    def score(self, variants):
        """Rows for the variants (each evaluated once per run), fewer if the evaluation limit is reached."""
        fresh = list(dict.fromkeys(v for v in variants if v not in self.seen))
        # In rounds of one evaluation per worker, so that a time limit is checked between them.
        step = max(1, getattr(self.pool, "jobs", 1)) if self.deadline is not None else len(fresh) or 1
        for start in range(0, len(fresh), step):
            if self.exhausted():
                break
            chunk = fresh[start:start + min(step, self.max_evals - self.evaluations)]
            for variant, row in zip(chunk, self.pool.score(chunk, self._advanced)):
                self.seen[variant] = row
            self.evaluations += len(chunk)
        rows = []
        for v in variants:
            if v not in self.seen:
                break
            rows.append(self.seen[v])
        return rows

    def _advanced(self, row):
        if self.ok(row) and (self.best is None or self.objective(row) > self.objective(self.best)):
            self.best = row
        note = ""
        if self.best and self.target == "bytes":
            note = f"best so far {self.best['packed_bytes']:,} B ({self.best['method']}, {self.best['values']})"
        elif self.best:
            note = f"best so far {100 * self.best['sparsity']:.1f}% ({self.best['method']})"
        self.advance(note)

    def variant(self, method, thresholds):
        return Variant.of(self.model, method, pack=self.target == "bytes", plan=thresholds, values=self.values,
                          calibration=self.calibration)

    # --- phase 2: uniform, per method ---
    def uniform(self, method):
        """The best passing row of `method` at one δ for every layer (None: the method does not apply)."""
        curve = self._sparsity_curve(method)
        if curve is None:
            return None
        levels = [s for s in LEVELS if s <= curve[-1][1] + 1e-9]
        passing, failing = (0.0, None), None
        for start in range(0, len(levels), self.pool.jobs):
            chunk = levels[start:start + self.pool.jobs]
            rows = self.score([self._uniform_variant(method, self._delta_for(method, curve, s)) for s in chunk])
            for level, row in zip(chunk, rows):
                if not self.ok(row):
                    failing = (level, row)
                    break
                passing = (level, row)
            if failing or len(rows) < len(chunk):
                break
        low, high = passing[0], failing[0] if failing else None
        for _ in range(3 if high is not None else 0):  # bisect between the last level that held and the first that failed
            middle = (low + high) / 2
            (row,) = self.score([self._uniform_variant(method, self._delta_for(method, curve, middle))]) or [None]
            if row is None:
                break
            if self.ok(row):
                low, passing = middle, (middle, row)
            else:
                high = middle
        return passing[1]

    def _uniform_variant(self, method, delta):
        options = {"dconv": delta, "dfc": delta} if method == "triangular" else {"delta": delta}
        variant = Variant.of(self.model, method, pack=self.target == "bytes", values=self.values,
                             calibration=self.calibration, **options, **self.selection)
        self.uniform_variants.add(variant)
        return variant

    # --- phase 2 for ecq: the quality parameter, then per-layer offsets from measured sensitivity ---
    def ecq_start(self, method):
        """The row of the smallest ecq state that holds on the tuning part with nothing zeroed (None: not even
        the finest QP tried). First one QP for every layer, the coarsest that holds; then each layer's offset
        from its measured sensitivity (ecq_offsets), and again the coarsest global QP that holds with them."""
        uniform = self._ecq_walk(method, {})
        if uniform is None or self.exhausted():
            return uniform
        edge = parse_values(uniform["values"])[1]
        offsets = self.ecq_offsets(method, edge + ECQ_PROBE_ABOVE)
        allocated = self._ecq_walk(method, offsets, first=edge) if offsets else None
        best = max((r for r in (uniform, allocated) if r is not None and self.ok(r)), key=self.objective)
        self.values = best["values"]
        return best

    def ecq_layers(self):
        """{layer: its float tensors of rank >= 2}: what ecq quantizes (training state aside)."""
        layers = {}
        for info in self.store.tensors:
            if info.role not in TRAINING_STATE and np.dtype(info.dtype).kind == "f" and len(info.shape) >= 2:
                layers.setdefault(info.layer, []).append(info.name)
        return layers

    def ecq_offsets(self, method, probe):
        """{layer: QP offset}. Each layer alone is stored at QP `probe` (the rest float32) and its loss on the
        tuning part measured: at high rate a layer's loss grows as g_l 2^(QP/2) and its bits fall n_l / 4 per
        QP, so equal marginal returns put QP_l = Q + 2 log2(n_l / g_l). Offsets are taken from their median,
        rounded, within ±ECQ_MAX_OFFSET; a layer whose loss does not show gets the largest."""
        from dataclasses import replace

        layers = self.ecq_layers()
        base = self._uniform_variant(method, 0.0)
        probes = {layer: replace(base, values="float32", calibration=self.calibration,
                                 value_plan=tuple(sorted((n, ecq_values(probe)) for n in names)))
                  for layer, names in layers.items()}
        rows = self.score(list(probes.values()))
        if len(rows) < len(probes) or len(layers) < 2:
            return {}
        floor = 1e-9 * max(1.0, abs(self.base))
        raw = {layer: 2 * np.log2(sum(self._sizes[n] for n in layers[layer]) / max(self._loss(row), floor))
               for layer, row in zip(probes, rows)}
        middle = float(np.median(list(raw.values())))
        return {layer: int(np.clip(round(value - middle), -ECQ_MAX_OFFSET, ECQ_MAX_OFFSET))
                for layer, value in raw.items()}

    def _ecq_walk(self, method, offsets, first=ECQ_QP_FIRST):
        """The row of the coarsest global QP that holds with these per-layer offsets: walked by
        ECQ_QP_STRIDE from `first` (the uniform edge, for offsets) to the edge of the budget, then bisected
        (None: nothing held)."""
        from dataclasses import replace

        layers = self.ecq_layers()

        def row_at(qp):
            self.values = ecq_values(qp)
            variant = self._uniform_variant(method, 0.0)
            plan = {n: ecq_values(int(np.clip(qp + offsets[layer], *QP_RANGE)))
                    for layer, names in layers.items() if offsets.get(layer) for n in names}
            if plan:
                variant = replace(variant, value_plan=tuple(sorted(plan.items())))
            (row,) = self.score([variant]) or [None]
            return row

        low, high = ECQ_QP_SEARCH
        rows, qp, direction = {}, first, None
        while low <= qp <= high and not self.exhausted():
            row = row_at(qp)
            if row is None:
                break
            rows[qp] = row
            step = ECQ_QP_STRIDE if self.ok(row) else -ECQ_QP_STRIDE
            if direction is not None and step != direction:
                break  # the edge of the budget lies between the last two
            direction, qp = step, qp + step
        passing = [q for q, r in rows.items() if self.ok(r)]
        if not passing:
            return None
        best = max(passing)
        failing = min((q for q, r in rows.items() if not self.ok(r) and q > best), default=None)
        while failing is not None and failing - best > 1 and not self.exhausted():
            middle = (best + failing) // 2
            row = row_at(middle)
            if row is None:
                break
            rows[middle] = row
            best, failing = (middle, failing) if self.ok(row) else (best, middle)
        return rows[best]

    # --- phases 2-3 with an N:M pattern: which layers take it ---
    def pattern_variant(self, method, pattern, tensors=None):
        """The pattern on every eligible tensor, or on `tensors` only (named exactly, whatever their size)."""
        selection = dict(self.selection)
        if tensors is not None:
            selection = pattern_selection({"pattern": pattern, "tensors": sorted(tensors)})
            del selection["pattern"]
        variant = Variant.of(self.model, method, pack=self.target == "bytes", values=self.values,
                             calibration=self.calibration, pattern=pattern, **selection)
        if tensors is None:
            self.uniform_variants.add(variant)
        return variant

    def patterned(self, method, pattern, max_layers=None):
        """The pattern on every layer's row (None: the method does not apply); when that fails the budget,
        states with fewer layers patterned are searched (recorded in `seen`)."""
        full = self.pattern_variant(method, pattern)
        try:
            sparsifier = full.sparsifier(self.tune)
            run_in_memory(self.store, [sparsifier])
        except WcompressError as exc:
            warn(f"autotune skips method {method}: {exc}")
            return None
        (row,) = self.score([full]) or [None]
        if row is None or self.ok(row) or max_layers == 0:
            return row
        infos = {t.name: t for t in self.store.tensors}
        layers = {}
        for name in sparsifier.counts:  # the tensors the pattern reached
            layers.setdefault(infos[name].layer, []).append(name)
        size = {layer: sum(infos[n].size for n in names) for layer, names in layers.items()}
        tuned = sorted(layers, key=lambda layer: -size[layer])[:max_layers] if max_layers else list(layers)
        alone = self.score([self.pattern_variant(method, pattern, layers[layer]) for layer in tuned])
        tuned = tuned[:len(alone)]
        drop = {layer: max(self._loss(r), 0.0) for layer, r in zip(tuned, alone)}
        order = sorted(tuned, key=lambda layer: (drop[layer] / size[layer], -size[layer]))

        def state(chosen):
            (row,) = self.score([self.pattern_variant(method, pattern, [n for l in chosen for n in layers[l]])]) \
                or [None]
            return row

        low, high = 0, len(order)  # the longest run of the order that holds (none patterned always does)
        while low < high and not self.exhausted():
            middle = (low + high + 1) // 2
            trial = state(order[:middle])
            if trial is not None and self.ok(trial):
                low = middle
            else:
                high = middle - 1
        chosen = order[:low]
        for layer in order[low + 1:]:  # the first after the run failed with it; later ones may still fit
            if self.exhausted():
                break
            trial = state(chosen + [layer])
            if trial is not None and self.ok(trial):
                chosen = chosen + [layer]
        return row

    def _eligible_sparsity(self, method, delta):
        variant = self._uniform_variant(method, delta)
        sparsifier = variant.sparsifier(self.tune)
        run_in_memory(self.store, [sparsifier])
        return sparsifier.summary().get("eligible_sparsity", 0.0)

    def _sparsity_curve(self, method):
        """[(δ, eligible sparsity)] at probe δ (no prediction: thresholds and counts only)."""
        try:
            return [(d, self._eligible_sparsity(method, d)) for d in DELTA_PROBES]
        except WcompressError as exc:
            warn(f"autotune skips method {method}: {exc}")
            return None

    def _delta_for(self, method, curve, level):
        """The δ whose eligible sparsity is closest to `level`: interpolated, then bisected on the counts."""
        low = max((p for p in curve if p[1] <= level), key=lambda p: p[1], default=curve[0])
        high = min((p for p in curve if p[1] >= level and p[0] >= low[0]), key=lambda p: p[0], default=curve[-1])
        if high[0] == low[0] or high[1] == low[1]:
            return low[0]
        delta = low[0] + (high[0] - low[0]) * (level - low[1]) / (high[1] - low[1])
        lo, hi = low, high
        for _ in range(6):
            s = self._eligible_sparsity(method, delta)
            if abs(s - level) < 0.005:
                break
            lo, hi = ((delta, s), hi) if s < level else (lo, (delta, s))
            delta = (lo[0] + hi[0]) / 2
        return round(delta, 6)

    # --- phase 3: per layer ---
    def per_layer(self, start_row, start_variant, max_layers=None):
        """Per-layer levels from measured sensitivity, then refined one raise at a time (every state is
        recorded in `seen`)."""
        sparsifier = start_variant.sparsifier(self.tune)
        run_in_memory(self.store, [sparsifier])
        method = start_variant.method
        calibrated = needs_calibration(method)
        if calibrated:  # chosen by calibration inputs: a state is a δ per layer (--layer overrides)
            names, document = list(sparsifier.counts), None
        else:
            document = getattr(sparsifier, "plan_document", lambda: {})()
            if "thresholds" not in document:  # a plugin sparsifier without thresholds: uniform only
                return
            names = list(document["thresholds"])
        infos = {t.name: t for t in self.store.tensors}
        layers = {}
        for name in names:
            layers.setdefault(infos[name].layer, []).append(name)
        if not layers:
            return
        size = {layer: sum(infos[n].size for n in names) for layer, names in layers.items()}
        tuned = sorted(layers, key=lambda layer: -size[layer])[:max_layers] if max_layers else list(layers)

        if calibrated:
            delta = dict(start_variant.options)["delta"]
            start_levels = {layer: delta for layer in tuned}

            def state(levels):
                options = dict(start_variant.options)
                options["layers"] = tuple(f"{literal_glob(n)}={levels[layer]}" for layer in tuned
                                          for n in layers[layer] if levels[layer] != delta)
                return Variant.of(self.model, method, pack=self.target == "bytes", values=self.values,
                                  calibration=self.calibration, **options)
        else:
            magnitudes = {n: np.sort(np.abs(self.store.load(n)).reshape(-1)) for n in names}

            def state(levels):
                """Exact thresholds for {layer: level}: the level-quantile of |w| in each of its tensors."""
                out = dict(document["thresholds"])  # layers not tuned (--max-layers) keep the start's
                for layer in tuned:
                    level = levels.get(layer, 0.0)
                    for name in layers[layer]:
                        k = int(np.floor(level * magnitudes[name].size))
                        out[name] = float(magnitudes[name][k - 1]) if k > 0 else -1.0
                return self.variant(method, out)

            start_levels = {layer: sum(int(np.count_nonzero(np.abs(self.store.load(n)) <= document["thresholds"][n]))
                                       for n in layers[layer]) / size[layer] for layer in tuned}
        options = {layer: sorted({round(min(0.99, max(0.0, start_levels[layer] + step)), 4) for step in LAYER_STEPS}
                                 | {start_levels[layer]}) for layer in tuned}

        # Sensitivity: each layer moved alone to each of its levels, every other layer as in the start.
        probes = [(layer, level) for layer in tuned for level in options[layer] if level != start_levels[layer]]
        rows = self.score([state({**start_levels, layer: level}) for layer, level in probes])
        if len(rows) < len(probes):
            return
        base_loss = self._loss(start_row)
        change = {(layer, start_levels[layer]): 0.0 for layer in tuned}  # drop relative to the start
        for (layer, level), row in zip(probes, rows):
            change[layer, level] = self._loss(row) - base_loss

        def allocation(price):
            """Each layer's level maximising weights zeroed − price × its measured drop."""
            return {layer: max(options[layer], key=lambda lv: (lv * size[layer] - price * change[layer, lv], -lv))
                    for layer in tuned}

        prices = [float(p) for p in np.geomspace(1e9, 1e-3, 120) * sum(size.values())]
        family = []  # allocations from cautious to aggressive, each once
        for price in prices:
            levels = allocation(price)
            if not family or levels != family[-1]:
                family.append(levels)
        best_levels, best_row = start_levels, start_row
        low, high = -1, len(family) - 1
        while low < high and not self.exhausted():  # the most aggressive allocation that holds
            middle = (low + high + 1) // 2
            variant = state(family[middle])
            (row,) = self.score([variant]) or [None]
            if row is None:
                break
            if self.ok(row):
                low = middle
                if self.objective(row) > self.objective(best_row):
                    best_levels, best_row = family[middle], row
            else:
                high = middle - 1
        # Refine: raise one layer one level at a time, most weights per unit of drop first.
        improved = True
        while improved and not self.exhausted():
            improved = False
            steps = []
            for layer in tuned:
                higher = [lv for lv in options[layer] if lv > best_levels[layer]]
                if higher:
                    lv = higher[0]
                    gain = (lv - best_levels[layer]) * size[layer]
                    cost = change[layer, lv] - change.get((layer, best_levels[layer]), 0.0)
                    steps.append((-(gain / cost) if cost > 0 else -np.inf, -gain, layer, lv))
            for *_, layer, lv in sorted(steps):
                if self.exhausted():
                    break
                levels = {**best_levels, layer: lv}
                variant = state(levels)
                (row,) = self.score([variant]) or [None]
                if row is not None and self.ok(row) and self.objective(row) > self.objective(best_row):
                    best_levels, best_row, improved = levels, row, True

    # --- phase 4: value width per layer ---
    def per_layer_values(self, widths):
        """From the smallest state that holds, lower one layer's value width at a time (largest layers
        first) to the next narrower width allowed, keeping each change that holds and saves bytes, pass after
        pass. An ecq state's layers go to a coarser QP instead, 2 at a time: its rate allocation refined by
        each layer's measured effect on the metric."""
        from dataclasses import replace

        order = [w for w in ("float32", "float16", "int8", "int4") if w in widths]
        passing = [(v, r) for v, r in self.seen.items() if self.ok(r)]
        if not passing:
            return
        variant, row = max(passing, key=lambda state: self.objective(state[1]))

        def narrower(current):
            """The next setting down from `current`: ecq's QP one stride coarser, else the next width."""
            kind, qp = parse_values(current)
            if kind == "ecq":
                return ecq_values(qp + ECQ_QP_STRIDE // 2) if qp + ECQ_QP_STRIDE // 2 <= QP_RANGE[1] else None
            return order[order.index(current) + 1] if current in order and order.index(current) + 1 < len(order) \
                else None

        layers = self.ecq_layers()
        # Passes over the layers until none takes a narrower setting (ecq's QP can go on rising); a layer that
        # fails once stays where it is.
        frozen, improved, first = set(), True, True
        # A width ladder ends after one pass (int4 is its bottom); ecq's QP can go on rising.
        while improved and not self.exhausted() and (first or parse_values(variant.values)[0] == "ecq"):
            improved, first = False, False
            for layer, names in sorted(layers.items(), key=lambda item: -sum(self._sizes[x] for x in item[1])):
                plan = dict(variant.value_plan)
                lower = None if layer in frozen else narrower(plan.get(names[0], variant.values))
                if lower is None:
                    continue
                trial = replace(variant, value_plan=tuple(sorted({**plan, **{n: lower for n in names}}.items())),
                                calibration=variant.calibration or self.calibration)
                rows = self.score([trial])
                if not rows:
                    return
                if self.ok(rows[0]) and self.objective(rows[0]) > self.objective(row):
                    variant, row, improved = trial, rows[0], True
                else:
                    frozen.add(layer)

    def closest(self):
        """(variant, row) of the evaluated state that lost least on the tuning part (--best-effort)."""
        return min(self.seen.items(), key=lambda state: self._loss(state[1]))

    def _loss(self, row):
        """How far below the dense score a row is, in the metric's units (positive = worse)."""
        return (self.base - row["value"]) if self.metric.higher_is_better else (row["value"] - self.base)


def autotune(model, spec, max_drop, dest, plan_path, relative=True, jobs=1, force=False, methods=None,
             holdout=0.3, validation=None, target="sparsity", selection=None, max_layers=None, max_evals=500,
             pack=False, values="float32", calibration=None, show_progress=False, pattern=None, cluster=None,
             time_limit=None, best_effort=False):
    """Tune on one part of the data, judge on the other; write the model and its plan. `values`, one or
    several of float32/float16/int8/int4: how the written container stores values; with several, each
    is a start of the search and the best state of any of them is written. `pattern` ('2:4'): the states
    are which layers take that N:M pattern, for the methods that keep N of M (relative by default).
    `cluster`: a cluster.Cluster to evaluate on Ray instead of `jobs` local processes. `time_limit`
    (seconds): no evaluation of the search starts after it; the best states found are then judged and
    written. `best_effort`: when no state meets the budget, write the one that came closest on the held-out
    examples instead of refusing (reported as outside the budget)."""
    if not max_drop >= 0:
        raise WcompressError(f"--max-drop is the loss allowed: 0 or more, not {max_drop:g}")
    deadline = None if time_limit is None else time.monotonic() + time_limit
    methods, value_options = _options(methods, values, target, pattern, pack, dest)
    store = open_model(model)  # a wrong path is the first thing to say
    _check_outputs(store, dest, plan_path, pack, force)
    if (not pack and store.format in ("keras", "keras-h5") and suffix_format(str(dest)) == "keras-weights-h5"
            and not spec.model_code):
        raise WcompressError("a .weights.h5 holds no model to run, and the written file is judged by running it: "
                             "name the output .keras (or give --model-code to build the model)", dest)
    tune, held, note = _parts(spec, holdout, validation)
    with open_pool(tune, jobs, cluster, [model, calibration, held.data]) as pool, \
            evaluation_progress(1 + 40 * len(methods), "autotune", show_progress, deadline) as advance:
        search = Search(model, tune, held, max_drop, relative, target, selection or {}, pool, advance, max_evals,
                        calibration=calibration, deadline=deadline)
        found = _search(search, methods, value_options, pattern, max_layers, target, spec, best_effort)
        judged = _judge(search, model, held, max_drop, relative, note, best_effort)
        judged["evaluated_by"] = pool.describe()
    candidate, _ = judged["chosen"]
    written = _write(model, candidate, tune, spec, dest, plan_path, pack, force)
    return _document(model, spec, search, found, judged, written, tune, held, max_drop, relative, target, note,
                     pattern, pack)


def _check_outputs(store, dest, plan_path, pack, force):
    """Refuse before the search what the writes would refuse after it (a search may take an hour)."""
    from wcompress.formats.writing import check_destination

    if str(dest).endswith(".tflite"):
        if os.path.exists(dest) and not force:
            raise WcompressError("output exists; pass --force to overwrite it", dest)
    else:
        check_destination(store, str(dest), force, tag="tuned", container=pack)
    if plan_path and os.path.exists(plan_path) and not force:
        raise WcompressError("output exists; pass --force to overwrite it", plan_path)


def _options(methods, values, target, pattern, pack, dest):
    """(methods, value widths), or the one-line refusal of a combination that cannot work."""
    if target not in ("sparsity", "bytes"):
        raise WcompressError(f"--target takes sparsity or bytes, not {target!r}")
    if target == "bytes" and not pack:  # a sparse model in a dense format is not smaller on disk
        raise WcompressError("--target bytes minimises the container's bytes: add --pack (or use wcompress compress)")
    if pattern is not None:
        from wcompress.methods.pruning import parse_pattern
        from wcompress.workflows.sweep import takes_pattern

        parse_pattern(pattern)
        methods = [m for m in (methods or ["relative"]) if takes_pattern(m)]
        if not methods:
            raise WcompressError("--pattern needs a method that keeps N of M: relative, wanda or sparsegpt")
    value_options = [values] if isinstance(values, str) else list(values)
    if not pack and value_options != ["float32"]:
        raise WcompressError("storing values in fewer bits needs the container: add --pack")
    if pack and str(dest).endswith(".tflite"):
        raise WcompressError("--pack writes the container; a .tflite output is the TFLite converter's file: "
                             "leave out --pack", dest)
    return list(methods or sparsifier_methods()), value_options


def _search(search, methods, value_options, pattern, max_layers, target, spec, best_effort=False):
    """The search on the tuning part: every method's uniform (or patterned) start for every value width,
    then per-layer levels from the best start and, for bytes, per-layer value widths. With `best_effort`,
    a search where nothing met the budget starts from the state that lost least and goes no further."""
    search.advance("dense")
    starts = []
    for stored in value_options:
        if stored == "ecq":  # its own start: the coarsest QP that holds, nothing zeroed
            row = search.ecq_start("relative" if "relative" in methods else methods[0])
            if row is not None:
                starts.append(row)
            continue
        search.values = stored
        for method in methods:
            row = search.patterned(method, pattern, max_layers) if pattern else search.uniform(method)
            if row is not None and (pattern or search.ok(row)):
                starts.append(row)
    if not starts or not any(search.ok(r) for v, r in search.seen.items()):
        if best_effort and search.seen:
            variant, row = search.closest()
            return {"starts": [], "start": row, "start_variant": variant}
        if search.stopped_by:
            raise WcompressError(f"no state within the budget was found before the {search.stopped_by} ran out "
                                 f"({search.evaluations} evaluations): allow more time or evaluations, or "
                                 "pass --best-effort for the closest state")
        if pattern:
            raise WcompressError(f"no layer takes {pattern} within the budget, not even alone ({spec.metric} "
                                 f"against {search.base:.4f})")
        raise WcompressError(f"every method at its lowest level loses more than the budget allows "
                             f"({spec.metric} against {search.base:.4f}); --best-effort writes the closest state")
    start = max(starts, key=lambda r: (search.ok(r), search.objective(r)))
    search.values = start["values"]
    if pattern:
        start_variant = search.pattern_variant(start["method"], pattern)
    else:
        start_variant = search._uniform_variant(start["method"], start["delta"])
    # An ecq start is refined per layer in its QP (per_layer_values), not in sparsity.
    if max_layers != 0 and not pattern and parse_values(start["values"])[0] != "ecq":
        search.per_layer(start, start_variant, max_layers)
    if target == "bytes" and (len(value_options) > 1 or parse_values(start["values"])[0] == "ecq"):
        search.per_layer_values(value_options)
    return {"starts": starts, "start": start, "start_variant": start_variant}


def _judge(search, model, held, max_drop, relative, note, best_effort=False):
    """The held-out part judges: every state that held on the tuning part (uniform levels of every method,
    per-layer allocations), best first, until one meets the budget there too; and, for a fair comparison,
    the best uniform state judged the same way. With `best_effort`, when none does, the state judged best
    on the held-out part (of those that held on the tuning part, else the one that lost least there)."""
    from dataclasses import replace

    candidates = sorted(((v, r) for v, r in search.seen.items() if search.ok(r)),
                        key=lambda state: search.objective(state[1]), reverse=True)
    resampled = replace(held, resamples=HELD_OUT_RESAMPLES)
    held_base, _, base_resampled = dense_score(model, resampled, resampled=True)
    held_rows, errors = {}, {}

    def holds_out(state):
        """Within the budget on the held-out part by one standard error of the margin: the search tried
        many states, and the first of them to pass by a little on a few examples would often be one whose
        luck ran that way (fer's 30 held-out faces passed a plan at 0.952 that 101 new faces put at 0.938)."""
        variant = state[0]
        if variant not in held_rows:
            (held_rows[variant],) = search.pool.score([variant], spec=resampled)
            errors[variant] = margin_error(search.metric, held_rows[variant].pop("resampled"), base_resampled,
                                           max_drop, relative)
            search.evaluations += 1
            search.advance("held-out check")
        margin = budget_margin(search.metric, held_rows[variant]["value"], held_base, max_drop, relative)
        return margin - errors[variant] >= -1e-12

    chosen = next((state for state in candidates if holds_out(state)), None)
    if chosen is None and best_effort and search.seen:
        tried = candidates or [search.closest()]
        for state in tried:
            holds_out(state)
        sign = 1 if search.metric.higher_is_better else -1
        chosen = max(tried, key=lambda state: (sign * held_rows[state[0]]["value"], search.objective(state[1])))
        warn(f"no state meets the budget on the held-out examples ({note}): --best-effort writes the closest, "
             f"{search.metric.name} {held_rows[chosen[0]]['value']:.4f} against {held_base:.4f} dense")
    if chosen is None:
        raise WcompressError(f"no setting the search found meets the budget on the held-out examples "
                             f"({note}); try a larger --max-drop or more data, or --best-effort for the closest state")
    uniform_state = next((state for state in candidates if state[0] in search.uniform_variants
                          and holds_out(state)), None)
    return {"chosen": chosen, "uniform_state": uniform_state, "held_base": held_base, "held_rows": held_rows,
            "errors": errors, "held": resampled}


def _write(model, candidate, tune, spec, dest, plan_path, pack, force):
    """The chosen state written: a container holds the model without its training state, as the bytes the
    search minimised; a .tflite is the tuned model in the input's format, converted (int8 weights), then
    measured itself. The plan is written beside it, unless calibration inputs decided the zeros."""
    from wcompress.formats.container import ContainerWriter
    from wcompress.methods.plan import write_plan
    from wcompress.methods.runner import run_passes
    from wcompress.plugins import get_pass

    sparsifier = candidate.sparsifier(tune)
    store = open_model(model)
    hessians = calibration_hessians(candidate, tune) if candidate.quantized else None
    writer = ContainerWriter(store, values=candidate.values, hessians=hessians,
                             value_plan=dict(candidate.value_plan)) if pack else None
    tflite = str(dest).endswith(".tflite")
    with custom_object_scope(spec.custom_objects), tempfile.TemporaryDirectory() as work:
        passes = ([get_pass("strip").new()] if pack or tflite else []) + [sparsifier]
        native = os.path.join(work, "tuned" + (native_suffix(store.format) or os.sep)) if tflite else dest
        result = run_passes(store, passes, native, force=force, show_progress=False, writer=writer, tag="tuned",
                            unsafe=spec.unsafe, hint="the budget held on the examples given; judge the file on "
                            "others with wcompress evaluate")
        if tflite:
            from wcompress.runtime.tflite_export import export_tflite

            export_tflite(result.output.path, dest, force=force, unsafe=spec.unsafe,
                          custom_objects=spec.custom_objects, input_names=spec.input_names or None,
                          output_name=spec.output_name, feeds=spec.feeds)
    if needs_calibration(candidate.method):  # its zeros follow from the calibration inputs: no plan replays them
        plan, plan_path = {}, None
    else:
        plan = sparsifier.plan_document()
        write_plan(plan_path, plan, force=force)
    return {"result": result, "path": dest if tflite else result.output.path,
            "bytes": os.path.getsize(dest) if tflite else result.output_bytes, "plan": plan,
            "plan_path": plan_path, "sparsifier": sparsifier, "store": store, "hessians": hessians}


def _document(model, spec, search, found, judged, written, tune, held, max_drop, relative, target, note,
              pattern, pack):
    """What autotune reports: both figures of the written file re-measured from it (a container is restored
    by the predictor), the uniform start and the best uniform state judged on the held-out part too."""
    candidate, _ = judged["chosen"]
    result, plan = written["result"], written["plan"]
    held_base, held_rows = judged["held_base"], judged["held_rows"]
    start, start_variant = found["start"], found["start_variant"]
    model_tensors = [t for t in result.tensors if t.role not in TRAINING_STATE and not t.dropped]
    sparsity = sum(t.zeros for t in model_tensors) / max(1, sum(t.size for t in model_tensors))
    tuned_value = evaluator_for(tune).score(evaluator_for(tune).predict(written["path"]))
    held = judged["held"]  # the spec _judge scored with: one evaluator (and dense model) for the held-out part
    held_value = evaluator_for(held).score(evaluator_for(held).predict(written["path"]))
    layers, sizes = {}, {}
    touched = set(plan.get("thresholds") or plan.get("tensors") or getattr(written["sparsifier"], "counts", {}))
    for t in result.tensors:
        if t.name in touched:
            layers[t.layer] = layers.get(t.layer, 0) + t.zeros
            sizes[t.layer] = sizes.get(t.layer, 0) + t.size
    if start_variant not in held_rows:
        held_rows[start_variant] = score_variant(start_variant, held)
    uniform_judged = None
    if judged["uniform_state"] is not None:
        variant, row = judged["uniform_state"]
        uniform_judged = {"method": row["method"], "delta": row["delta"], "pattern": row["pattern"],
                          "sparsity": row["sparsity"],
                          "value": row["value"], "held_out_value": held_rows[variant]["value"],
                          "packed_bytes": row.get("packed_bytes")}
    return {
        "model": model, "metric": spec.metric, "max_drop": max_drop, "budget": "relative" if relative else "absolute",
        "target": target, "examples": note,
        "baseline": search.base, "held_out_baseline": held_base,
        "uniform": {"method": start["method"], "delta": start["delta"], "pattern": start["pattern"],
                    "sparsity": start["sparsity"],
                    "value": start["value"], "held_out_value": held_rows[start_variant]["value"],
                    "packed_bytes": start.get("packed_bytes")},
        "methods": {r["method"]: {"delta": r["delta"], "pattern": r["pattern"], "sparsity": r["sparsity"],
                                  "value": r["value"]} for r in found["starts"]},
        "tuned": {"method": candidate.method, "pattern": pattern, "values": candidate.values,
                  "value_plan": dict(candidate.value_plan),
                  "sparsity": sparsity, "value": tuned_value,
                  "held_out_value": held_value,
                  "held_out_standard_error": judged["errors"].get(candidate),
                  "within_budget": within_budget(search.metric, held_value, held_base, max_drop, relative),
                  "layers": {k: layers[k] / sizes[k] for k in layers}},
        "uniform_held_out": uniform_judged,
        "gain": sparsity - (uniform_judged["sparsity"] if uniform_judged else 0.0), "output": written["path"],
        "output_bytes": written["bytes"], "plan": written["plan_path"], "evaluations": search.evaluations + 2,
        "search_stopped_by": search.stopped_by,
        "evaluated_by": judged["evaluated_by"],
        "compare": comparisons(written["store"], spec, written["hessians"]) if pack and target == "bytes" else None,
    }


def comparisons(store, spec, hessians):
    """Bytes of the same model stored other ways: dense, every float in float16, int8 codes in the container,
    the TFLite converter's dynamic-range int8 and Keras's own int8 (None where the model does not convert)."""
    import os
    import tempfile

    from wcompress.methods.keras_quantized import quantize_keras
    from wcompress.runtime.tflite_export import export_tflite

    out = {"dense_bytes": store.bytes, "float16_container_bytes": packed_bytes(store, {}, "float16"),
           "int8_container_bytes": packed_bytes(store, {}, "int8", hessians)}
    with tempfile.TemporaryDirectory() as work:
        try:
            out["tflite_int8_bytes"] = os.path.getsize(export_tflite(
                store.path, os.path.join(work, "m.tflite"), unsafe=spec.unsafe, custom_objects=spec.custom_objects,
                input_names=spec.input_names or None, output_name=spec.output_name, feeds=spec.feeds))
        except WcompressError:
            out["tflite_int8_bytes"] = None
        try:
            out["keras_int8_bytes"] = quantize_keras(store, os.path.join(work, "k.keras"), unsafe=spec.unsafe,
                                                     custom_objects=spec.custom_objects)[0].bytes
        except WcompressError:
            out["keras_int8_bytes"] = None
    return out


def _parts(spec, holdout, validation):
    """(tuning spec, held-out spec, a note saying which examples judge the result)."""
    from dataclasses import replace

    evaluator = evaluator_for(spec)
    count = evaluator.examples
    if validation:
        held = replace(spec, data=validation)
        return spec, held, f"tuned on {count} examples of {spec.data}, judged on {evaluator_for(held).examples} " \
                           f"of {validation}"
    if holdout and int(round(count * holdout)) >= MIN_HELD_OUT and count - int(round(count * holdout)) >= MIN_HELD_OUT:
        tune_index, held_index = split_examples(count, holdout)
        return spec.part(tune_index), spec.part(held_index), \
            f"tuned on {len(tune_index)} examples, judged on {len(held_index)} held out"
    if holdout:
        warn(f"{count} examples are too few to hold {holdout:g} out (at least {MIN_HELD_OUT} per part): tuned and "
             "judged on the same examples, so the figure is optimistic; pass --validation FILE")
    return spec, spec, f"tuned and judged on the same {count} examples"
