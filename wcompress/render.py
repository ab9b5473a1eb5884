"""Tables for the terminal. Only formatting here: every figure arrives already measured."""

from rich.console import Console
from rich.table import Table

_BARS = " ▁▂▃▄▅▆▇█"

import os
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


def profile_table(profile):
    t = profile["totals"]
    table = Table(title=f"{profile['path']}  ({profile['format']}, layer order: {profile['order']})",
                  show_lines=False, header_style="bold")
    for col, justify in (("tensor", "left"), ("role", "left"), ("shape", "left"), ("dtype", "left"),
                         ("params", "right"), ("bytes", "right"), ("share", "right"), ("min", "right"),
                         ("max", "right"), ("span", "right"), ("std", "right"), ("zeros", "right"),
                         ("|w|<1e-3", "right"), ("histogram", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "tensor")
    last_layer = None
    for r in profile["tensors"]:
        if r["layer"] != last_layer:
            table.add_row(f"[bold]{r['layer']}[/]", *[""] * 13)
            last_layer = r["layer"]
        pct = (lambda k: f"{100 * r[k] / r['params']:.1f}%" if k in r and r["params"] else "")
        table.add_row(
            "  " + _short(r["name"], r["layer"]), r["role"], "×".join(map(str, r["shape"])) or "scalar", r["dtype"],
            f"{r['params']:,}", f"{r['bytes']:,}", f"{100 * r['share']:.2f}%", _num(r.get("min")),
            _num(r.get("max")), _num(r.get("span")), _num(r.get("std")), pct("zeros"), pct("small"),
            sparkline(r.get("hist")),
        )
    console.print(table)
    console.print(
        f"params {t['params']:,} (with training state {t['params_with_training_state']:,}) · "
        f"model tensors {t['model_bytes']:,} B · optimizer slots {t['optimizer_bytes']:,} B · "
        f"all training state {t['training_state_bytes']:,} B · files on disk {profile['file_bytes']:,} B · "
        f"{t['tensors_holding_98pct']} of {t['model_tensors']} model tensors hold 98% of the bytes"
    )


def size_change(label, before, after):
    saved = before - after
    pct = 100 * saved / before if before else 0.0
    console.print(f"{label}: {before:,} B ({human(before)}) → {after:,} B ({human(after)}), "
                  f"saved {saved:,} B ({pct:.1f}%)")


def plugins_table(rows):
    table = Table(title="wcompress plugins", header_style="bold")
    for col in ("plugin", "passes", "source", "file"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["plugin"], ", ".join(r["passes"]), r["source"], r["file"] or "")
    console.print(table)


def sparsity_table(summary, outcomes):
    table = Table(title=f"sparsify: {summary['method']}", header_style="bold")
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


def report_table(result):
    t = result["totals"]
    table = Table(title=f"{result['path']} ({result['kind']}, {result['format']})", header_style="bold")
    for col in ("tensor", "sparsity", "encoding", "values", "original B", "stored B", "bound B", "stored/bound"):
        table.add_column(col, justify="left" if col in ("tensor", "encoding", "values") else "right")
    for r in result["tensors"]:
        ratio = r["stored_over_bound"]
        table.add_row(r["name"], f"{100 * r['sparsity']:.2f}%", r["encoding"], r["value_dtype"],
                      f"{r['original_bytes']:,}", f"{r['stored_bytes']:,}", f"{r['bound_bytes']:,.0f}",
                      "" if ratio is None else f"{ratio:.3f}")
    console.print(table)
    console.print(f"sparsity {100 * t['sparsity']:.2f}% · file {t['file_bytes']:,} B · "
                  f"information bound {t['bound_bytes']:,.0f} B (file/bound {t['file_over_bound']:.3f}) · "
                  f"dense tensors {t['dense_bytes']:,} B (file/dense {t['file_over_dense']:.3f})")
    if t.get("gzip_dense_bytes") is not None:
        console.print(f"dense file {t['dense_model_file_bytes']:,} B, gzip -6 of it {t['gzip_dense_bytes']:,} B "
                      f"(file/gzip {t['file_bytes'] / t['gzip_dense_bytes']:.3f})")
    if "against_bytes" in t:
        console.print(f"against {t['against']}: {t['against_bytes']:,} B (file/original {t['file_over_against']:.3f})")


def sweep_table(result):
    table = Table(title=f"sweep {result['model']} ({result['metric']}, dense {result['baseline']:.4f}, "
                        f"acceptable {'≥' if result['higher_is_better'] else '≤'} {result['threshold']:.4f})",
                  header_style="bold")
    for col in ("method", "δ", "sparsity", result["metric"], "packed B", "ok"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in result["rows"]:
        table.add_row(r["method"], f"{r['delta']:g}", f"{100 * r['sparsity']:.2f}%", f"{r['value']:.4f}",
                      f"{r['packed_bytes']:,}", "yes" if r["acceptable"] else "no")
    console.print(table)


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
