"""Tables for the terminal. Only formatting here: every figure arrives already measured."""

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text
from wcompress.errors import short_list

_BARS = " ▁▂▃▄▅▆▇█"

import os
import shutil
import sys

# Pipes and CI logs get the full table rather than 80 folded columns.
console = Console(width=None if sys.stdout.isatty() else 200)


def human(n):
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024


def sparkline(counts):
    if not counts:
        return ""
    top = max(counts) or 1
    return "".join(_BARS[min(8, -(-8 * c // top))] for c in counts)


def _num(x, fmt="{:.4g}"):
    return "" if x is None else fmt.format(x)


def _short(name, layer):
    if name.startswith(layer + "/"):
        return name[len(layer) + 1:] or name
    marker = "/" + layer + "/"
    return name.split(marker, 1)[1] if marker in name else name


# The profile table's columns. Name, role, shape, dtype, params, bytes, share and zeros are always
# shown; the statistics give way, in _PROFILE_DROP order, to keep the names readable on a narrow terminal.
_PROFILE_COLUMNS = (("tensor", "left"), ("role", "left"), ("shape", "left"), ("dtype", "left"), ("params", "right"),
                    ("bytes", "right"), ("share", "right"), ("min", "right"), ("max", "right"), ("span", "right"),
                    ("std", "right"), ("zeros", "right"), ("|w|<1e-3", "right"), ("histogram", "left"))
_PROFILE_DROP = ("span", "max", "min", "histogram", "std", "|w|<1e-3")
# Names keep at least this many characters before a statistic column is dropped for them, and never
# fewer than _NAME_MIN (the table then runs past the terminal's edge rather than hide the names).
_NAME_WANT, _NAME_MIN = 32, 16


def terminal_width():
    """COLUMNS when set, else the terminal's width; 200 for pipes and CI logs (the full table)."""
    env = os.environ.get("COLUMNS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    if sys.stdout.isatty():
        return shutil.get_terminal_size((200, 24)).columns
    return 200


def fit_name(name, width):
    """`name` in at most `width` cells: the middle gives way to "…" so that the tail (…/kernel) stays."""
    if cell_len(name) <= width:
        return name
    if width <= 1:
        return "…"[:width]
    tail = name[-(width - 1):]
    while cell_len(tail) > width - 1:
        tail = tail[1:]
    return "…" + tail


def _pad(value, width, justify):
    gap = " " * max(0, width - cell_len(value))
    if justify == "right":
        return gap + value
    if justify == "center":
        return gap[:len(gap) // 2] + value + gap[len(gap) // 2:]
    return value + gap


def _profile_cells(r):
    pct = (lambda k: f"{100 * r[k] / r['params']:.1f}%" if k in r and r["params"] else "")
    return {
        "tensor": _short(r["name"], r["layer"]), "role": r["role"],
        "shape": "×".join(map(str, r["shape"])) or "scalar", "dtype": r["dtype"], "params": f"{r['params']:,}",
        "bytes": f"{r['bytes']:,}", "share": f"{100 * r['share']:.2f}%",
        "min": _num(r.get("min")), "max": _num(r.get("max")), "span": _num(r.get("span")), "std": _num(r.get("std")),
        "zeros": pct("zeros"), "|w|<1e-3": pct("small"), "histogram": sparkline(r.get("hist")),
    }


def profile_layout(profile, width, wide=False):
    """Which columns the profile table shows within `width` cells, and how wide the name column is.

    Returns (columns, name_width, table_width): every column when `wide` or when they all fit with
    the names whole; otherwise statistic columns are dropped (span, max, min, histogram, std, |w|<1e-3)
    until the names keep min(their length, 32) cells, then the names take what is left, ellipsized in
    the middle; never below 16 cells (the table is then wider than `width`).
    """
    rows = [_profile_cells(r) for r in profile["tensors"]]
    widths = {c: max([cell_len(c)] + [cell_len(row[c]) for row in rows]) for c, _ in _PROFILE_COLUMNS}
    # Tensor rows are indented two cells under their layer's row.
    widths["tensor"] = max([cell_len("tensor")] + [2 + cell_len(row["tensor"]) for row in rows]
                           + [cell_len(r["layer"]) for r in profile["tensors"]])
    shown = [c for c, _ in _PROFILE_COLUMNS]
    natural = widths["tensor"]

    def others():  # every shown column but the name, with one space between columns
        return sum(widths[c] + 1 for c in shown if c != "tensor")

    if wide:
        return shown, natural, natural + others()
    for victim in _PROFILE_DROP:
        if width - others() >= min(natural, _NAME_WANT):
            break
        shown.remove(victim)
    name_width = max(min(natural, width - others()), min(natural, _NAME_MIN))
    return shown, name_width, name_width + others()


def profile_table(profile, wide=False, width=None):
    """Print the per-tensor table and the totals, fitted to `width` (the terminal's) unless `wide`."""
    t = profile["totals"]
    width = width or terminal_width()
    shown, name_width, table_width = profile_layout(profile, width, wide)
    justify = dict(_PROFILE_COLUMNS)
    # Laid out here rather than by rich's Table, which measures every cell again: a few hundred tensors
    # took most of a second, longer than reading the file.
    cells = [_profile_cells(r) for r in profile["tensors"]]
    widths = {c: max([cell_len(c)] + [cell_len(row[c]) for row in cells]) for c in shown}
    widths["tensor"] = name_width
    table_width = sum(widths[c] for c in shown) + len(shown) - 1

    def line(values):
        return " ".join(_pad(values[c], widths[c], justify[c]) for c in shown)

    text = Text(no_wrap=True, overflow="ignore")
    title = f"{profile['path']}  ({profile['format']}, layer order: {profile['order']})"
    text.append(_pad(fit_name(title, table_width), table_width, "center") + "\n", style="italic")
    text.append(line({c: c for c in shown}) + "\n", style="bold")
    text.append("─" * table_width + "\n")
    last_layer = None
    for r, row in zip(profile["tensors"], cells):
        if r["layer"] != last_layer:
            text.append(line({**{c: "" for c in shown}, "tensor": fit_name(r["layer"], name_width)}) + "\n",
                        style="bold")
            last_layer = r["layer"]
        row = dict(row, tensor="  " + fit_name(row["tensor"], name_width - 2))
        text.append(line(row) + "\n")
    # Printed at the table's own width when it is wider than the terminal (--wide, very narrow
    # terminals): the terminal then wraps lines, but rich never squeezes a column to nothing.
    out = Console(width=max(width, table_width), highlight=False)
    out.print(text, end="")
    hidden = [c for c, _ in _PROFILE_COLUMNS if c not in shown]
    if hidden:
        out.print(Text(f"not shown at {width} columns: {', '.join(hidden)} (--wide shows them)", style="dim"),
                  width=width)
    out.print(
        f"params {t['params']:,} (with training state {t['params_with_training_state']:,}) · "
        f"model tensors {t['model_bytes']:,} B · optimizer slots {t['optimizer_bytes']:,} B · "
        f"all training state {t['training_state_bytes']:,} B · files on disk {profile['file_bytes']:,} B · "
        f"{t['tensors_holding_98pct']} of {t['model_tensors']} model tensors hold 98% of the bytes",
        width=width,
    )
    quantized = profile.get("quantized_layers") or []
    if quantized:
        weights = sum(q["weights"] for q in quantized)
        size = sum(q["bytes"] for q in quantized)
        codes = "/".join(f"int{bits}" for bits in sorted({q["code_bits"] for q in quantized}))
        each = short_list((f"{q['layer']} {q['bits_per_weight']:.2f}" for q in quantized), limit=6)
        out.print(f"already quantized: {len(quantized)} layers of {codes} codes with scales, {weights:,} weights "
                  f"in {size:,} B ({8 * size / weights:.2f} bits per weight; {each})", width=width)


def size_change(label, before, after):
    saved = before - after
    pct = 100 * saved / before if before else 0.0
    console.print(f"{label}: {before:,} B ({human(before)}) → {after:,} B ({human(after)}), "
                  f"saved {saved:,} B ({pct:.1f}%)")


def fitted_vectors(fit):
    """pack's line on ecq's fitted vectors (runtime/fitting.py's VectorFit)."""
    examples = f"{fit['fitted_on']} examples, {fit['kept_out']} kept out"
    if fit.get("batch_norms_folded"):
        console.print(f"batch norms: {fit['batch_norms_folded']} folded into a scale and an offset (their moving "
                      f"mean and variance stored as zeros)")
    if not fit["step"]:
        console.print(f"vectors: fitting {fit['vectors']} on {examples} did not lower the kept-out output error "
                      f"({fit['error_before']:.3g}): the model's own are stored"
                      + (", folded" if fit.get("batch_norms_folded") else ""))
        return
    console.print(f"vectors: {fit['vectors']} fitted to the dense model's outputs on {examples}: kept-out output "
                  f"error {fit['error_before']:.3g} → {fit['error_after']:.3g} (step {fit['step']})")


def plugins_table(rows):
    table = Table(title="wcompress plugins", header_style="bold")
    for col in ("plugin", "passes", "source", "file"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["plugin"], ", ".join(r["passes"]), r["source"], r["file"] or "")
    console.print(table)


def sparsity_table(summary, outcomes):
    pattern = f" {summary['pattern']}" if summary.get("pattern") else ""
    table = Table(title=f"sparsify: {summary['method']}{pattern}", header_style="bold")
    for col, justify in (("tensor", "left"), ("role", "left"), ("threshold", "right"), ("zeros", "right"),
                         ("elements", "right"), ("sparsity", "right")):
        table.add_column(col, justify=justify)
    thresholds = summary["thresholds"]
    for o in outcomes:
        if o.name not in thresholds:
            continue
        table.add_row(o.name, o.role, f"{thresholds[o.name]:.6g}", f"{o.zeros:,}", f"{o.size:,}",
                      f"{100 * o.zeros / o.size:.2f}%" if o.size else "")
    console.print(table)
    model = [o for o in outcomes if not o.dropped and o.role not in ("optimizer", "step", "metric")]
    zeros, total = sum(o.zeros for o in model), sum(o.size for o in model)
    console.print(f"sparsified tensors: {summary['zeros']:,} zeros of {summary['eligible_params']:,} "
                  f"({100 * summary['eligible_sparsity']:.2f}%) · whole model: {zeros:,} of {total:,} "
                  f"({100 * zeros / total if total else 0:.2f}%)")
    floor_line = size_floor_line(summary, total)
    if floor_line:
        console.print(floor_line, markup=False, highlight=False, soft_wrap=True)
    group = summary.get("pattern", "").partition(":")[2]
    for key, why in (("pattern_skipped", f"inputs not a multiple of {group}"),
                     ("uncalibrated", "not reached by the calibration capture")):
        if summary.get(key):
            names = summary[key]
            console.print(f"kept dense ({why}): {len(names)} tensors: {', '.join(names[:4])}"
                          + (" …" if len(names) > 4 else ""), markup=False, highlight=False, soft_wrap=True)


def size_floor_line(summary, model_weights, names_shown=3):
    """One line on the tensors the size floor kept dense: count, weights, share of the model, first names."""
    skipped, floor = summary.get("skipped_small") or {}, summary.get("min_size") or 0
    if not skipped:
        return f"no tensor below the size floor of {floor:,} weights" if floor else ""
    weights = sum(skipped.values())
    names = ", ".join(list(skipped)[:names_shown]) + (f" and {len(skipped) - names_shown} more"
                                                       if len(skipped) > names_shown else "")
    share = f"{100 * weights / model_weights:.2f}%" if model_weights else "?"
    count = f"{len(skipped)} tensor" + ("s" if len(skipped) > 1 else "")
    return (f"kept dense below the size floor of {floor:,} weights (--min-size): {count}, "
            f"{weights:,} weights ({share} of the model): {names}")


def report_table(result):
    t = result["totals"]
    kind = f"container version {result['container_version']}" if result.get("container_version") else result["kind"]
    table = Table(title=f"{result['path']} ({kind}, {result['format']})", header_style="bold")
    for col in ("tensor", "role", "sparsity", "encoding", "coders", "values", "original B", "stored B", "bits/w",
                "raw bound B", "stored/raw", "entropy bound B", "stored/entropy"):
        table.add_column(col, justify="left" if col in ("tensor", "role", "encoding", "coders", "values") else "right")
    ratio = (lambda x: "" if x is None else f"{x:.3f}")
    for r in result["tensors"]:
        table.add_row(r["name"], r["role"], f"{100 * r['sparsity']:.2f}%", r["encoding"], "+".join(r["coders"]),
                      r["value_dtype"], f"{r['original_bytes']:,}", f"{r['stored_bytes']:,}",
                      f"{r['bits_per_weight']:.3f}", f"{r['bound_bytes']:,.0f}",
                      ratio(r["stored_over_bound"]), f"{r['entropy_bound_bytes']:,.0f}",
                      ratio(r["stored_over_entropy_bound"]))
    console.print(table)
    console.print(f"sparsity {100 * t['sparsity']:.2f}% · {t['bits_per_weight']:.3f} bits per weight stored · "
                  f"file {t['file_bytes']:,} B · "
                  f"raw-value bound {t['bound_bytes']:,.0f} B (file/bound {ratio(t['file_over_bound'])}) · "
                  f"order-0 entropy bound {t['entropy_bound_bytes']:,.0f} B (file/entropy "
                  f"{ratio(t['file_over_entropy_bound'])}) · dense tensors {t['dense_bytes']:,} B "
                  f"(file/dense {ratio(t['file_over_dense'])})")
    if t.get("gzip_dense_bytes") is not None:
        console.print(f"dense file {t['dense_model_file_bytes']:,} B, gzip -6 of it {t['gzip_dense_bytes']:,} B "
                      f"(file/gzip {t['file_bytes'] / t['gzip_dense_bytes']:.3f})")
    quantized = result.get("quantized_layers") or []
    if quantized:
        weights = sum(q["weights"] for q in quantized)
        stored = sum(q["stored_bytes"] for q in quantized)
        console.print(f"already quantized in the input: {len(quantized)} layers, {weights:,} weights as "
                      f"{'/'.join(f'int{b}' for b in sorted({q['code_bits'] for q in quantized}))} codes with scales "
                      f"stored in {stored:,} B ({8 * stored / weights:.2f} bits per weight)")
    if "against_bytes" in t:
        console.print(f"against {t['against']}: {t['against_bytes']:,} B (file/original {t['file_over_against']:.3f})")


def sweep_table(result):
    against = f" to {result['reference']}" if result.get("reference") else ""
    table = Table(title=f"sweep {result['model']} ({result['metric']}{against} on {result['examples']:,} examples, "
                        f"dense {result['baseline']:.4f}, acceptable {'≥' if result['higher_is_better'] else '≤'} "
                        f"{result['threshold']:.4f})", header_style="bold")
    several = len({r.get("values", "float32") for r in result["rows"]}) > 1
    setting = "δ or N:M" if any(r.get("pattern") for r in result["rows"]) else "δ"
    for col in ("method",) + (("values",) if several else ()) + (setting, "sparsity", result["metric"], "packed B",
                                                                  "ok"):
        table.add_column(col, justify="left" if col in ("method", "values") else "right")
    for r in result["rows"]:
        table.add_row(r["method"], *((r["values"],) if several else ()),
                      r["pattern"] if r.get("pattern") else f"{r['delta']:g}",
                      f"{100 * r['sparsity']:.2f}%", f"{r['value']:.4f}", f"{r['packed_bytes']:,}",
                      "yes" if r["acceptable"] else "no")
    console.print(table)


def _error(tuned):
    """' ± SE', the standard error the held-out judgement allowed for (None before a state was judged)."""
    error = tuned.get("held_out_standard_error")
    return f" ± {error:.4f}" if error else ""


def autotune_report(result):
    metric, u, t = result["metric"], result["uniform"], result["tuned"]
    console.print(f"{result['examples']}")
    console.print(f"dense {metric}: {result['baseline']:.4f} (tuning part), {result['held_out_baseline']:.4f} "
                  "(held out)")
    from wcompress.workflows.sweep import setting

    for method, m in result["methods"].items():
        console.print(f"  uniform {method}: {setting(m)}, sparsity {100 * m['sparsity']:.2f}%, {metric} "
                      f"{m['value']:.4f}")
    console.print(f"best uniform: {u['method']} {setting(u)}, sparsity {100 * u['sparsity']:.2f}%, {metric} "
                  f"{u['value']:.4f} tuning / {u['held_out_value']:.4f} held out")
    judged = result["uniform_held_out"]
    if judged is None:
        console.print("no uniform setting meets the budget on both parts")
    elif judged != u:
        console.print(f"best uniform within the budget on both parts: {judged['method']} {setting(judged)}, "
                      f"sparsity {100 * judged['sparsity']:.2f}%, {metric} {judged['value']:.4f} tuning / "
                      f"{judged['held_out_value']:.4f} held out")
    raised = {k: v for k, v in t["layers"].items()}
    if raised:
        shown = ", ".join(f"{k} {100 * v:.0f}%" for k, v in list(raised.items())[:8])
        what = f"layers taking {t['pattern']}" if t.get("pattern") else "per-layer sparsity"
        console.print(f"  {what}: {shown}" + (f", … ({len(raised)} layers)" if len(raised) > 8 else ""))
    verdict = "within" if t["within_budget"] else "OUTSIDE"
    console.print(f"tuned: sparsity {100 * t['sparsity']:.2f}% ({100 * result['gain']:+.2f} points over that uniform), "
                  f"{metric} "
                  f"{t['value']:.4f} tuning / {t['held_out_value']:.4f}{_error(t)} held out ({verdict} the budget), "
                  f"re-evaluated from {result['output']} ({result['output_bytes']:,} B)")
    compare = result.get("compare")
    if compare and compare.get("dense_bytes"):
        ours, dense = result["output_bytes"], compare["dense_bytes"]
        # One denominator for every figure: the input file.
        shown = [f"{label} {compare[key]:,} B ({compare[key] / dense:.3f}×)" for key, label in (
            ("float16_container_bytes", "float16 container"), ("int8_container_bytes", "int8 container"),
            ("tflite_int8_bytes", "TFLite int8"), ("keras_int8_bytes", "Keras int8")) if compare.get(key)]
        widths = {}
        for name, chosen in (t.get("value_plan") or {}).items():
            widths.setdefault(chosen, []).append(name)
        others = "".join(f", {len(names)} tensors {chosen}" for chosen, names in widths.items())
        console.print(f"sizes as a fraction of the input file ({dense:,} B): this file {ours:,} B "
                      f"({ours / dense:.3f}×, values {t.get('values') or 'in their own dtype'}{others})"
                      + "".join(f"; {item}" for item in shown))
    if result.get("search_stopped_by"):
        console.print(f"the search stopped at its {result['search_stopped_by']}: the best state found by then")
    if not t["within_budget"]:
        console.print("OVER BUDGET: no state met it; --best-effort wrote the closest one found")
    if result.get("verified") is False:
        console.print("UNVERIFIED: tuned and judged on the same examples (--no-holdout)")
    if result["plan"]:
        console.print(f"{result['evaluations']} evaluations; plan: {result['plan']}  "
                      f"(wcompress sparsify MODEL --plan {result['plan']})")
    else:
        console.print(f"{result['evaluations']} evaluations; no plan ({t['method']} follows the calibration inputs)")


def ensemble_table(result):
    table = Table(title=f"ensembles within {result['budget']:,} B ({result['dtype']}, {result['metric']})",
                  header_style="bold")
    for col in ("members", "weights", result["metric"], "bytes"):
        table.add_column(col, justify="left" if col in ("members", "weights") else "right")
    for c in result["combinations"]:
        table.add_row(" + ".join(os.path.basename(os.path.normpath(m)) for m in c["members"]),
                      ", ".join(f"{w:g}" for w in c["weights"]), f"{c['value']:.4f}", f"{c['bytes']:,}")
    console.print(table)
    for c in result["candidates"]:
        console.print(f"  candidate {c['path']}: {c['bytes']:,} B, {result['metric']} {c['value']:.4f}")
    console.print(f"best: {result['merge_command']}")


def quantize_summary(result, model, bits, calibrated):
    """quantize: Keras's quantized layers (which stayed float), or the size change of a TF graph."""
    import click

    summary = result.get("quantize")
    if summary is not None:
        click.echo(f"{len(summary['quantized_layers'])} layers int{bits}"
                   + (f" ({len(summary['calibrated_layers'])} calibrated)" if calibrated else "")
                   + (f"; float: {', '.join(summary['float_layers'])} ({summary['float_share']:.0%} of the weight "
                      "bytes)" if summary["float_layers"] else ""))
    size_change(f"{result['format']} {model} → {result['output']}", result["input_bytes"], result["output_bytes"])


def fp16_summary(result, model, on_overflow):
    import click

    summary = result["passes"]["fp16"]
    click.echo(f"cast {len(summary['cast_tensors'])} tensors to float16 "
               f"({summary['cast_bytes_before']:,} B → {summary['cast_bytes_after']:,} B)")
    for name, count in summary["overflow"].items():
        click.echo(f"  {name}: {count} values beyond float16's range "
                   f"({'kept float32' if on_overflow == 'keep' else 'clipped'})")
    for name, count in summary.get("bfloat16_values_changed", {}).items():
        click.echo(f"  {name}: {count} bfloat16 values below float16's normal range became subnormals or 0")
    size_change(f"{result['format']} {model} → {result['output']}", result["input_bytes"], result["output_bytes"])


def average_summary(result):
    import click

    click.echo(f"averaged {result['averaged_tensors']} tensors over {len(result['inputs'])} checkpoints:")
    for path in result["inputs"]:
        click.echo(f"  {path}")
    click.echo(f"wrote {result['output']}: {result['output_bytes']:,} B")


def merge_summary(result):
    import click

    for m in result["members"]:
        click.echo(f"member {m['path']} ({m['format']}): {m['bytes']:,} B, weight {m['weight']:g}")
    budget_note = f" (budget {result['budget']:,} B)" if result["budget"] else ""
    if result.get("member_input"):
        click.echo(f"each member: input {result['member_input']}, output {result['member_output']}"
                   + "".join(f", --feed {f}" for f in result.get("implied_feeds", [])))
    click.echo(f"merged {result['dtype']} → {result['output']}: {result['output_bytes']:,} B{budget_note}; "
               f"feed {result['input_tensor']}, read {result['output_tensor']}")


def strip_summary(result, model):
    import click

    dropped = [t for t in result.tensors if t.dropped]
    click.echo(f"dropped {len(dropped)} of {len(result.tensors)} tensors "
               f"({sum(t.size for t in dropped):,} values of training state)")
    size_change(f"{result.input_format} {model} → {result.output.path}", result.input_bytes, result.output_bytes)
