"""ensemble-search: score each candidate once, then choose members and output weights that maximise the
metric while the merged model fits a size budget (every combination is tried)."""

import itertools
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from wcompress.errors import WcompressError
from wcompress.formats.child import WorkerPool
from wcompress.workflows.scoring import RAM
from wcompress.workflows.variants import evaluator_for, score_candidate


@dataclass
class Candidate:
    path: str
    bytes: int
    predictions: np.ndarray = field(repr=False)
    value: float = None


def ensemble_search(models, spec, budget, dtype="float32", jobs=1, top=10, step=0.05, min_members=1, cluster=None):
    """Score each candidate once, then pick members and weights maximising the metric under the budget
    (`cluster`: a cluster.Cluster scores them on Ray)."""
    if len(models) > 12:
        raise WcompressError("ensemble-search takes at most 12 candidates")
    if cluster is not None:
        from wcompress.workflows.pools import open_pool

        with open_pool(spec, jobs, cluster, models) as pool:
            measured = pool.candidates(models, dtype)
    elif jobs <= 1:
        measured = [score_candidate((m, dtype, spec)) for m in models]
    else:
        with WorkerPool(jobs) as pool:
            measured = list(pool.map(score_candidate, [(m, dtype, spec) for m in models]))
    evaluator = evaluator_for(spec)
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
    from wcompress.workflows.merge import merge

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
