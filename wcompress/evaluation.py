"""What compression costs: evaluate, sweep (seed 004 Fig. 3), autotune, and ensemble selection.

Variants are sparsified into a RAM-backed temp folder and run with the stock loaders, so what is
measured is exactly what `sparsify` would write. `jobs` > 1 scores variants in worker processes
(spawned, each loading the data once); the results are the same as with one process.
"""

import itertools
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .errors import WcompressError
from .io import TRAINING_STATE, open_model
from .io.predict import custom_object_scope, load_data, load_predictor
from .metrics import get_metric, within_budget

RAM = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@dataclass(frozen=True)
class EvalSpec:
    """Everything needed to score a model; plain data, so worker processes can rebuild it."""

    data: str
    metric: str
    reference: str = None
    input_names: tuple = ()
    output_name: str = None
    feeds: tuple = ()
    unsafe: bool = False
    batch_size: int = 256
    custom_objects: str = None  # --custom-objects: FILE.py, module or module:attr


class Evaluator:
    def __init__(self, spec):
        self.spec = spec
        self.data = load_data(spec.data)
        self.metric = get_metric(spec.metric)
        self._reference = None
        if self.metric.needs == "labels" and "y" not in self.data:
            raise WcompressError(f"metric {spec.metric} needs labels: the data has no 'y' array", spec.data)
        if self.metric.needs == "reference" and not spec.reference:
            raise WcompressError(f"metric {spec.metric} compares to a reference model: pass --reference")

    def predict(self, path, show_progress=False):
        predictor = load_predictor(path, list(self.spec.input_names) or None, self.spec.output_name,
                                   self.spec.feeds, self.spec.unsafe, self.spec.custom_objects)
        try:
            return predictor.predict(self.data, self.spec.batch_size, show_progress)
        finally:
            predictor.close()

    def truth(self):
        if self.metric.needs == "reference":
            if self._reference is None:
                self._reference = self.predict(self.spec.reference)
            return self._reference
        return self.data["y"]

    def score(self, predictions):
        return float(self.metric.fn(self.truth(), predictions))


# --- variants, possibly in worker processes --------------------------------------------------

_worker = {}


def _init_worker(spec):
    _worker["evaluator"] = Evaluator(spec)


def _evaluator(spec):
    """This process's evaluator for `spec` (data loaded once)."""
    if _worker.get("evaluator") is None or _worker["evaluator"].spec != spec:
        _init_worker(spec)
    return _worker["evaluator"]


@dataclass(frozen=True)
class Variant:
    model: str
    method: str
    delta: float = None
    layers: tuple = ()
    pack: bool = False


def sparsify_variant(variant, dest, force=False):
    """Write the variant; return (output path, model sparsity, sparsifier summary, plan document)."""
    from .plugins import get_pass
    from .runner import run_passes

    store = open_model(variant.model)
    params = {"dconv": variant.delta, "dfc": variant.delta} if variant.method == "triangular" else {
        "delta": variant.delta}
    sparsifier = get_pass(variant.method).new(layers=variant.layers, **params)
    result = run_passes(store, [sparsifier], dest, force=force, show_progress=False)
    model = [t for t in result.tensors if t.role not in TRAINING_STATE and not t.dropped]
    sparsity = sum(t.zeros for t in model) / max(1, sum(t.size for t in model))
    return result.output.path, sparsity, result.summaries[sparsifier.name], sparsifier.plan_document()


def score_variant(variant):
    """Sparsify into RAM, run the stock-loaded result, measure; packed bytes if asked."""
    from .io.container import ContainerWriter
    from .runner import run_passes

    evaluator = _worker["evaluator"]
    with tempfile.TemporaryDirectory(dir=RAM) as work:
        store = open_model(variant.model)
        name = os.path.basename(os.path.normpath(variant.model)) if not store.format.endswith("checkpoint") else ""
        path, sparsity, summary, _ = sparsify_variant(variant, os.path.join(work, "v", name or "model.ckpt"))
        value = evaluator.score(evaluator.predict(path))
        packed = None
        if variant.pack:
            sparse = open_model(path)
            packed = run_passes(sparse, [], os.path.join(work, "c.h5"), show_progress=False,
                                writer=ContainerWriter(sparse, values="float32")).output_bytes
    return {"method": variant.method, "delta": variant.delta, "layers": list(variant.layers),
            "sparsity": sparsity, "value": value, "packed_bytes": packed,
            "sparsified_zeros": summary["zeros"], "sparsified_params": summary["eligible_params"]}


def run_variants(variants, spec, jobs=1):
    if jobs <= 1:
        _evaluator(spec)
        return [score_variant(v) for v in variants]
    context = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(spec,)) as pool:
        return list(pool.map(score_variant, variants))


def baseline(model, spec):
    evaluator = _evaluator(spec)
    return evaluator.score(evaluator.predict(model)), evaluator.metric


# --- sweep ----------------------------------------------------------------------------------

def parse_range(text):
    """'0:0.9:0.1' -> [0.0, 0.1, …, 0.9]; '0.5,0.7' -> [0.5, 0.7]."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            count = int(round((stop - start) / step)) + 1
            values = [round(start + i * step, 10) for i in range(count)]
        else:
            values = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise WcompressError(f"--deltas takes START:STOP:STEP or a comma list, got {text!r}") from exc
    if not values or any(not 0 <= v <= 1 for v in values):
        raise WcompressError(f"--deltas must lie in [0, 1], got {text!r}")
    return values


def sweep(model, methods, deltas, spec, jobs=1, acceptable=0.95):
    base, metric = baseline(model, spec)
    variants = [Variant(model, m, d, pack=True) for m in methods for d in deltas]
    rows = run_variants(variants, spec, jobs)
    threshold = base * acceptable if metric.higher_is_better else base / acceptable
    for row in rows:
        row["acceptable"] = row["value"] >= threshold if metric.higher_is_better else row["value"] <= threshold
    return {"model": model, "metric": spec.metric, "baseline": base, "threshold": threshold,
            "higher_is_better": metric.higher_is_better, "rows": rows}


def plot_sweep(result, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise WcompressError("--plot needs matplotlib: pip install 'wcompress[plot]'") from exc
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in dict.fromkeys(r["method"] for r in result["rows"]):
        rows = sorted((r for r in result["rows"] if r["method"] == method), key=lambda r: r["sparsity"])
        ax.plot([100 * r["sparsity"] for r in rows], [r["value"] for r in rows], marker="o", label=method)
    ax.axhline(result["threshold"], color="grey", linestyle="--", label="acceptable")
    ax.set_xlabel("model sparsity (%)")
    ax.set_ylabel(result["metric"])
    ax.set_title(os.path.basename(os.path.normpath(result["model"])))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- autotune -------------------------------------------------------------------------------

UNIFORM_GRID = [round(0.05 * i, 2) for i in range(1, 20)]
LADDER = 0.05


def autotune(model, spec, max_drop, dest, plan_path, relative=True, jobs=1, max_layers=8, force=False):
    """Largest model sparsity within the budget: the best uniform relative δ first, then each layer's δ
    raised (largest layers first) while the budget holds. Writes the model and its plan."""
    from .plan import write_plan
    from .plugins import get_pass

    base, metric = baseline(model, spec)

    def ok(row):
        return within_budget(metric, row["value"], base, max_drop, relative)

    grid = run_variants([Variant(model, "relative", d) for d in UNIFORM_GRID], spec, jobs)
    passing = [r for r in grid if ok(r)]
    if not passing:
        raise WcompressError(f"even relative δ = {UNIFORM_GRID[0]} loses more than the budget allows "
                             f"({spec.metric} {grid[0]['value']:.4f} against {base:.4f})")
    uniform = max(passing, key=lambda r: r["sparsity"])
    probe = get_pass("relative").new(delta=uniform["delta"])
    sizes = {}
    for info in open_model(model).tensors:
        if probe.eligible(info):
            sizes[info.layer] = sizes.get(info.layer, 0) + info.size
    layers = sorted(sizes, key=lambda layer: -sizes[layer])[:max_layers]
    chosen, evaluations = {}, len(grid) + 1  # the grid, plus the dense baseline
    for layer in layers:
        ladder = [round(uniform["delta"] + LADDER * k, 4) for k in range(1, 20)
                  if uniform["delta"] + LADDER * k < 0.999]
        for start in range(0, len(ladder), max(1, jobs)):
            chunk = ladder[start:start + max(1, jobs)]
            rows = run_variants([Variant(model, "relative", uniform["delta"], _overrides({**chosen, layer: d}))
                                 for d in chunk], spec, jobs)
            evaluations += len(rows)
            stop = False
            for d, row in zip(chunk, rows):
                if not ok(row):
                    stop = True
                    break
                chosen[layer] = d
            if stop:
                break
    final = Variant(model, "relative", uniform["delta"], _overrides(chosen))
    with custom_object_scope(spec.custom_objects):  # an output suffix of another Keras format loads the model
        path, sparsity, summary, plan = sparsify_variant(final, dest, force=force)
    write_plan(plan_path, plan, force=force)
    evaluator = _evaluator(spec)
    value = evaluator.score(evaluator.predict(path))  # re-evaluated from the file written
    return {"model": model, "metric": spec.metric, "baseline": base, "max_drop": max_drop,
            "budget": "relative" if relative else "absolute",
            "uniform": {"delta": uniform["delta"], "sparsity": uniform["sparsity"], "value": uniform["value"]},
            "tuned": {"delta": uniform["delta"], "layers": chosen, "sparsity": sparsity, "value": value,
                      "within_budget": within_budget(metric, value, base, max_drop, relative)},
            "gain": sparsity - uniform["sparsity"], "output": path, "plan": plan_path,
            "evaluations": evaluations + 1}  # and the re-evaluation of the written model


def _overrides(deltas):
    return tuple(f"{layer}={d}" for layer, d in sorted(deltas.items()))


# --- ensemble search ------------------------------------------------------------------------

@dataclass
class Candidate:
    path: str
    bytes: int
    predictions: np.ndarray = field(repr=False)
    value: float = None


def _candidate(path_and_dtype):
    """Size as the merge would write it (training state dropped, fp16 if asked) and predictions."""
    from .plugins import get_pass
    from .runner import run_passes

    path, dtype = path_and_dtype
    evaluator = _worker["evaluator"]
    store = open_model(path)
    with tempfile.TemporaryDirectory(dir=RAM) as work:
        name = "model.ckpt" if store.format.endswith("checkpoint") else os.path.basename(os.path.normpath(path))
        passes = [get_pass("fp16").new()] if dtype == "float16" else [get_pass("strip").new()]
        written = run_passes(store, passes, os.path.join(work, "w", name), show_progress=False)
        predictions = evaluator.predict(written.output.path)
        return written.output_bytes, predictions


def ensemble_search(models, spec, budget, dtype="float32", jobs=1, top=10, step=0.05, min_members=1):
    """Score each candidate once, then pick members and weights maximising the metric under the budget."""
    if len(models) > 12:
        raise WcompressError("ensemble-search takes at most 12 candidates")
    if jobs <= 1:
        _evaluator(spec)
        measured = [_candidate((m, dtype)) for m in models]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(spec,)) as pool:
            measured = list(pool.map(_candidate, [(m, dtype) for m in models]))
    evaluator = _evaluator(spec)
    truth, metric = evaluator.truth(), evaluator.metric
    candidates = [Candidate(m, size, pred, evaluator.score(pred)) for m, (size, pred) in zip(models, measured)]
    fitting = [c for c in candidates if c.bytes <= budget]
    if not fitting:
        smallest = min(candidates, key=lambda c: c.bytes)
        raise WcompressError(f"budget {budget:,} B is smaller than every candidate (smallest: {smallest.path}, "
                             f"{smallest.bytes:,} B)")
    sign = 1 if metric.higher_is_better else -1
    combos = []
    if min_members > len(fitting):
        raise WcompressError(f"only {len(fitting)} candidates fit the budget alone; --min-members {min_members} "
                             "cannot be met")
    for k in range(min_members, len(fitting) + 1):
        for members in itertools.combinations(fitting, k):
            size = sum(c.bytes for c in members)
            if size > budget:
                continue
            weights, value = _best_weights([c.predictions for c in members], truth, metric, sign, step)
            combos.append({"members": [c.path for c in members], "weights": weights, "value": value, "bytes": size})
    combos.sort(key=lambda c: (-sign * c["value"], c["bytes"]))
    combos = _verify_best(combos, budget, dtype, spec)
    if not combos:
        raise WcompressError(f"no combination of {min_members} or more candidates fits {budget:,} B")
    return {"metric": spec.metric, "budget": budget, "dtype": dtype, "higher_is_better": metric.higher_is_better,
            "candidates": [{"path": c.path, "bytes": c.bytes, "value": c.value} for c in candidates],
            "combinations": combos[:top], "evaluated_combinations": len(combos)}


def _verify_best(combos, budget, dtype, spec):
    """Sizes of ensembles are sums of their members until the best is built: merge it in a temp
    folder and measure; while it turns out over budget, drop it and try the next."""
    from .merge import merge

    while combos and len(combos[0]["members"]) > 1 and not combos[0].get("measured"):
        best = combos[0]
        with tempfile.TemporaryDirectory(dir=RAM) as work:
            keras_like = all(m.endswith((".keras", ".h5", ".hdf5")) for m in best["members"])
            built = merge(best["members"], os.path.join(work, "ensemble" + (".keras" if keras_like else "/")),
                          weights=best["weights"], dtype=dtype, input_name=(spec.input_names or [None])[0],
                          output_name=spec.output_name, feeds=spec.feeds, unsafe=spec.unsafe,
                          custom_objects=spec.custom_objects)
        if built["output_bytes"] > budget:
            combos.pop(0)
            continue
        best["bytes"], best["measured"] = built["output_bytes"], True
    return combos


def _best_weights(predictions, truth, metric, sign, step):
    """Coordinate ascent on the weight simplex in multiples of `step` (deterministic)."""
    k = len(predictions)
    units = int(round(1 / step))
    counts = [units // k] * k
    counts[0] += units - sum(counts)

    def value(c):
        mixed = sum((n / units) * p for n, p in zip(c, predictions))
        return float(metric.fn(truth, mixed))

    current = value(counts)
    improved = k > 1
    while improved:
        improved = False
        for i, j in itertools.permutations(range(k), 2):
            if counts[j] == 0:
                continue
            trial = list(counts)
            trial[i] += 1
            trial[j] -= 1
            score = value(trial)
            if sign * score > sign * current + 1e-12:
                counts, current, improved = trial, score, True
    return [round(n / units, 6) for n in counts], current


def merge_command(combo, dtype, spec, output="ensemble"):
    parts = ["wcompress", "merge", *[_quote(p) for p in combo["members"]]]
    if len(combo["members"]) > 1:
        parts += ["--weights", ",".join(f"{w:g}" for w in combo["weights"])]
    if dtype == "float16":
        parts += ["--dtype", "float16"]
    for name in spec.input_names:
        parts += ["--input-tensor", name]
    if spec.output_name:
        parts += ["--output-tensor", spec.output_name]
    for feed in spec.feeds:
        parts += ["--feed", feed]
    if spec.custom_objects:
        parts += ["--custom-objects", _quote(spec.custom_objects)]
    if spec.unsafe:
        parts += ["--unsafe"]
    return " ".join(parts + ["-o", output])


def _quote(text):
    import shlex

    return shlex.quote(text)
