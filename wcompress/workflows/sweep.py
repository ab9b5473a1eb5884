"""sweep: each method at each δ — model sparsity, the metric and packed bytes (the paper's Fig. 3 curves)."""

import os

from wcompress.errors import WcompressError
from wcompress.progress import evaluation_progress
from wcompress.workflows.variants import Variant, evaluator_for
from wcompress.workflows.pools import open_pool

# δ means something else to each method: flat and triangular scale a layer span (|w| up to about half the
# span, so useful δ are far below 1 for triangular's own-span thresholds), relative is the fraction zeroed.
DEFAULT_GRIDS = {"flat": "0:1:0.1", "triangular": "0:0.1:0.01", "relative": "0:0.9:0.1"}


def parse_range(text):
    """'0:0.9:0.1' -> [0.0, 0.1, …, 0.9]; '0.5,0.7' -> [0.5, 0.7]."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0:
                raise ValueError("step must be positive")
            count = int(round((stop - start) / step)) + 1
            values = [round(start + i * step, 10) for i in range(count)]
        else:
            values = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise WcompressError(f"--deltas takes START:STOP:STEP or a comma list, got {text!r}") from exc
    if not values or any(not 0 <= v <= 1 for v in values):
        raise WcompressError(f"--deltas must lie in [0, 1], got {text!r}")
    return values


def parse_grids(text, methods):
    """--deltas: one grid for every method ('0:0.9:0.1', '0.3,0.6'), or per method
    ('flat=0:1:0.1,triangular=0:0.02:0.002,relative=0.3,0.5'); methods it leaves out keep their default grid."""
    grids = {m: parse_range(DEFAULT_GRIDS.get(m, DEFAULT_GRIDS["relative"])) for m in methods}
    if not text:
        return grids
    groups, current = {}, None
    for token in text.split(","):
        name, sep, value = token.partition("=")
        if sep:
            current = name.strip()
            if current not in methods:
                raise WcompressError(f"--deltas names {current!r}, which is not among --methods ({', '.join(methods)})")
            groups[current] = [value]
        elif current is None:
            groups.setdefault(None, []).append(token)
        else:
            groups[current].append(token)
    if None in groups:
        if len(groups) > 1:
            raise WcompressError(f"--deltas mixes a grid for every method with per-method grids: {text!r}")
        return {m: parse_range(",".join(groups[None])) for m in methods}
    for method, tokens in groups.items():
        grids[method] = parse_range(",".join(tokens))
    return grids


def sweep(model, methods, grids, spec, jobs=1, acceptable=0.95, selection=None, show_progress=False,
          values=("float32",), calibration=None, patterns=(), cluster=None):
    """Rows of method, δ, model sparsity, metric and packed bytes for every method and δ of its grid, and
    every way of storing the values (`values`: float32, float16, int8, int4; int8/int4 GPTQ-rounded on
    `calibration` inputs when given). `patterns` ('2:4', …) add a row per N:M pattern for every method that
    takes one (relative, wanda, sparsegpt). `selection`: include / exclude / layers / min_size, as sparsify
    takes them. `cluster`: a cluster.Cluster to evaluate on Ray instead of `jobs` local processes."""
    selection = selection or {}
    patterned = [m for m in methods if takes_pattern(m)]
    if patterns and not patterned:
        raise WcompressError(f"--pattern needs a method that keeps N of M (relative, wanda, sparsegpt) among "
                             f"--methods ({', '.join(methods)})")
    variants = []
    for v in values:
        for m in methods:
            variants += [Variant.of(model, m, pack=True, values=v, calibration=calibration, **_delta_options(m, d),
                                    **selection) for d in grids[m]]
            if m in patterned:
                variants += [Variant.of(model, m, pack=True, values=v, calibration=calibration, pattern=p,
                                        **selection) for p in patterns]
    with open_pool(spec, jobs, cluster, [model, calibration]) as pool, \
            evaluation_progress(len(variants) + 1, "sweep", show_progress) as advance:
        base, metric = pool.dense(model, spec), evaluator_for(spec).metric
        advance("dense")
        rows = pool.score(variants, lambda row: advance(f"{row['method']} {setting(row)}"))
        where = pool.describe()
    threshold = base * acceptable if metric.higher_is_better else base / acceptable
    for row in rows:
        row["acceptable"] = row["value"] >= threshold if metric.higher_is_better else row["value"] <= threshold
    return {"model": model, "metric": spec.metric, "reference": spec.reference, "examples": _examples(spec),
            "baseline": base, "threshold": threshold, "higher_is_better": metric.higher_is_better, "rows": rows,
            "evaluated_by": where}


def takes_pattern(method):
    from wcompress.plugins import get_pass

    return bool(getattr(get_pass(method), "takes_pattern", False))


def setting(row):
    """How a row was sparsified, for display: δ=0.5, or the N:M pattern."""
    return row["pattern"] if row.get("pattern") else f"δ={row['delta']:g}"


def _delta_options(method, delta):
    return {"dconv": delta, "dfc": delta} if method == "triangular" else {"delta": delta}


def _examples(spec):
    return evaluator_for(spec).examples


def write_sweep_csv(result, path):
    """The sweep's rows as CSV: method, values, δ, pattern, sparsity, the metric, packed bytes, acceptable."""
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "values", "delta", "pattern", "sparsity", result["metric"], "packed_bytes",
                         "acceptable"])
        for r in result["rows"]:
            writer.writerow([r["method"], r["values"], "" if r["delta"] is None else r["delta"], r["pattern"] or "",
                             f"{r['sparsity']:.6f}", f"{r['value']:.6f}", r["packed_bytes"], r["acceptable"]])


def plot_sweep(result, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise WcompressError("--plot needs matplotlib: pip install 'wcompress[plot]'") from exc
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    curves = list(dict.fromkeys((r["method"], r.get("values", "float32")) for r in result["rows"]))
    for method, values in curves:
        rows = sorted((r for r in result["rows"] if (r["method"], r.get("values", "float32")) == (method, values)),
                      key=lambda r: r["sparsity"])
        label = method if len({v for _, v in curves}) == 1 else f"{method} {values}"
        ax.plot([100 * r["sparsity"] for r in rows], [r["value"] for r in rows], marker="o", label=label)
    ax.axhline(result["threshold"], color="grey", linestyle="--", label="acceptable")
    ax.set_xlabel("model sparsity (%)")
    ax.set_ylabel(result["metric"])
    ax.set_title(os.path.basename(os.path.normpath(result["model"])))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
