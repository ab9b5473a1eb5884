import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import run_cli, run_json

from wcompress.cli import cli
from wcompress.formats import open_model
from wcompress.workflows.stats import tensor_stats

# Parameter counts the models' own authors / frameworks report (see shared/real-models.md).
REAL_PARAMS = {
    "fer": (58_423, "keras-h5"),
    "musicnn": (792_079, "tf1-checkpoint"),
    "musicnn-vgg": (607_030, "tf1-checkpoint"),
    "basic-pitch": (16_864, "savedmodel"),
    "mhcnuggets": (26_241, "weights-h5"),
}


@pytest.mark.parametrize("name", sorted(REAL_PARAMS))
def test_profile_real_model_params(real, name):
    params, fmt = REAL_PARAMS[name]
    report = run_json("profile", real[name])
    assert report["format"] == fmt
    assert report["totals"]["params"] == params
    names = {t["name"] for t in report["tensors"]}
    assert len(names) == report["totals"]["tensors"]


def test_profile_musicnn_reports_adam_slots_apart(real):
    report = run_json("profile", real["musicnn"])
    totals = report["totals"]
    assert totals["tensors"] == 150 and totals["model_tensors"] == 64
    assert totals["params_with_training_state"] == 2_366_399
    # Two Adam slots per model variable, float32.
    assert totals["optimizer_bytes"] == (2_366_399 - 792_079) * 4
    assert totals["model_bytes"] == 792_079 * 4
    assert report["order"] == "graph"


def test_profile_keras_model_order_and_roles(tiny):
    report = run_json("profile", tiny["keras"])
    layers = list(dict.fromkeys(t["layer"] for t in report["tensors"]))
    assert layers[:4] == ["hidden", "norm", "hidden2", "head"]
    roles = {t["name"]: t["role"] for t in report["tensors"]}
    assert roles["layers/dense/vars/0"] == "kernel"
    assert roles["layers/dense/vars/1"] == "bias"
    assert [roles[f"layers/batch_normalization/vars/{i}"] for i in range(4)] == ["batchnorm"] * 4
    assert report["order"] == "model"
    assert report["totals"]["params"] == 12 * 32 + 32 + 4 * 32 + 32 * 16 + 16 + 16 * 3 + 3


def test_profile_text_table_and_totals(real):
    out = run_cli("profile", real["fer"]).stdout
    assert "params 58,423" in out
    assert "conv2d_1" in out and "kernel" in out


def test_order_file_overrides(tiny, tmp_path):
    order = tmp_path / "order.txt"
    order.write_text("# reversed\nhead\nhidden2\nnorm\nhidden\n")
    report = run_json("profile", tiny["keras"], "--order", order)
    layers = list(dict.fromkeys(t["layer"] for t in report["tensors"]))
    assert layers[:4] == ["head", "hidden2", "norm", "hidden"]
    assert report["order"] == "file"


def test_tensor_stats_exact_figures():
    values = np.array([[0.0, 0.0005, -0.25, 1.0], [0.5, 0.0, -0.0001, 2.0]], dtype=np.float32)
    stats = tensor_stats(values)
    assert stats["zeros"] == 2
    assert stats["small"] == 4  # 0, 0.0005, 0, -0.0001
    assert stats["min"] == -0.25 and stats["max"] == 2.0 and stats["span"] == 2.25
    assert stats["std"] == pytest.approx(float(values.astype(np.float64).std()), rel=1e-12)
    assert sum(stats["hist"]) == 8


def _reference_mean_std(values):
    """Mean and population std from their definition, with exactly rounded sums (math.fsum)."""
    flat = [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
    mean = math.fsum(flat) / len(flat)
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in flat) / len(flat))


_RNG = np.random.default_rng(8)
STAT_CASES = {
    "one element": np.array([0.3238], dtype=np.float32),  # musicnn's gamma showed std 4.55e-05
    "constant": np.full((64, 3), 1.7470001, dtype=np.float32),
    "constant float64": np.full(999, 0.1),  # 0.1 * 999 / 999 is not 0.1 in float64
    "constant, several threads": np.full(3_000_001, -0.25, dtype=np.float32),
    "two close values": np.array([1.0, np.nextafter(np.float32(1), np.float32(2))], dtype=np.float32),
    "normal": _RNG.standard_normal((300, 700)).astype(np.float32),
    "far from zero": (1e4 + 1e-3 * _RNG.standard_normal(2_500_003)).astype(np.float32),
    "float64 offset": 1e8 + _RNG.standard_normal(700_001),
    "outlier first": np.concatenate([[1e6], _RNG.standard_normal(2_200_000)]).astype(np.float32),
    "float16": _RNG.standard_normal(5000).astype(np.float16),
}


@pytest.mark.parametrize("case", sorted(STAT_CASES))
def test_tensor_stats_mean_std_exact(case):
    values = STAT_CASES[case]
    mean, std = _reference_mean_std(values)
    stats = tensor_stats(values)
    if std == 0:
        assert stats["std"] == 0.0 and stats["mean"] == mean
    else:
        assert stats["std"] == pytest.approx(std, rel=1e-12, abs=0)
        assert stats["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-15 * std)
    assert stats["min"] == float(values.min()) and stats["max"] == float(values.max())
    assert sum(stats["hist"]) == len(values.reshape(-1)[::max(1, values.size // (1 << 18))])


def test_tensor_stats_non_finite_values_give_nan_not_a_wrong_range():
    stats = tensor_stats(np.array([1.0, np.nan, 2.0], dtype=np.float32))
    assert all(math.isnan(stats[k]) for k in ("min", "max", "mean", "std"))
    stats = tensor_stats(np.array([1.0, np.inf], dtype=np.float32))
    assert stats["min"] == 1.0 and stats["max"] == math.inf and "hist" not in stats


def test_profile_constant_tensor_std_is_zero(real):
    report = run_json("profile", real["musicnn"])
    gamma = next(r for r in report["tensors"] if r["name"] == "batch_normalization/gamma")
    assert gamma["params"] == 1 and gamma["std"] == 0.0 and gamma["mean"] == gamma["min"]
    assert all(r["std"] == 0.0 for r in report["tensors"] if r.get("min") is not None and r["min"] == r["max"])


def test_profile_stats_match_numpy_on_real_tensor(real):
    store = open_model(real["musicnn"])
    report = run_json("profile", real["musicnn"])
    row = max(report["tensors"], key=lambda r: r["params"])
    array = store.load(row["name"]).astype(np.float64)
    assert row["min"] == array.min() and row["max"] == array.max()
    assert row["std"] == pytest.approx(array.std(), rel=1e-12)
    assert row["mean"] == pytest.approx(array.mean(), rel=1e-12)
    assert row["small"] == int((np.abs(array) < 1e-3).sum())


def test_plot_writes_png(real, tmp_path):
    png = tmp_path / "hist.png"
    run_cli("profile", real["fer"], "--plot", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_json_is_valid_json(real):
    text = run_cli("profile", real["basic-pitch"], "--json").stdout
    assert json.loads(text)["totals"]["params"] == 16_864


_REPORTS = {}


def _profile_at(path, columns, *extra):
    """The profile table as a user's terminal of `columns` columns gets it (rich reads COLUMNS)."""
    result = CliRunner(env={"COLUMNS": str(columns)}).invoke(cli, ["profile", str(path), *extra],
                                                             catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def _table_rows(out):
    """(header cells, [(name cell, is_tensor_row)]) read back from the printed table."""
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("tensor "))
    header = lines[head].split()
    name_end = lines[head].index(" role ") + 1
    rows = []
    for line in lines[head + 2:]:
        if not line.strip() or line.startswith(("not shown at ", "params ")):
            break
        rows.append((line[:name_end].strip(), line.startswith("  ")))
    return header, rows


def _assert_every_name_readable(out, report, columns, whole):
    header, rows = _table_rows(out)
    for col in ("tensor", "role", "shape", "dtype", "params", "bytes", "share", "zeros"):
        assert col in header, (columns, header)
    shown = [name for name, is_tensor in rows if is_tensor]
    assert len(shown) == len(report["tensors"]), columns
    for cell, r in zip(shown, report["tensors"]):
        last = r["name"].rsplit("/", 1)[-1]
        tail = cell[1:] if cell.startswith("…") else cell
        assert r["name"].endswith(tail) and tail.endswith(last), (columns, cell, r["name"])
        if whole:
            assert not cell.startswith("…") and (r["name"] == tail or r["name"].endswith("/" + tail)), (columns, cell)
    layers = [name for name, is_tensor in rows if not is_tensor]
    tensors = report["tensors"]
    runs = [r["layer"] for i, r in enumerate(tensors) if i == 0 or r["layer"] != tensors[i - 1]["layer"]]
    assert len(layers) == len(runs)
    for cell, layer in zip(layers, runs):
        assert layer.endswith(cell[1:] if cell.startswith("…") else cell) and (cell == layer or not whole)


@pytest.mark.parametrize("columns", [80, 120, 200])
@pytest.mark.parametrize("model", ["fer", "musicnn", "mhcnuggets"])
def test_profile_table_fits_the_terminal_and_keeps_every_name(real, model, columns):
    report = _REPORTS.get(model) or _REPORTS.setdefault(model, run_json("profile", real[model]))
    out = _profile_at(real[model], columns)
    assert max(len(line) for line in out.splitlines()) <= columns
    # Names are whole where they fit: always at 200 columns, at 120 for these models.
    _assert_every_name_readable(out, report, columns, whole=columns >= 120)
    header, _ = _table_rows(out)
    if columns == 200:
        assert header[-6:] == ["max", "span", "std", "zeros", "|w|<1e-3", "histogram"]
    if columns == 80:
        assert "(--wide shows them)" in " ".join(out.split()) and "span" not in header
    assert "model tensors hold 98% of the bytes" in " ".join(out.split())


def test_profile_wide_shows_every_column_at_80(real):
    report = run_json("profile", real["fer"])
    out = _profile_at(real["fer"], 80, "--wide")
    header, _ = _table_rows(out)
    assert header == ["tensor", "role", "shape", "dtype", "params", "bytes", "share", "min", "max", "span", "std",
                      "zeros", "|w|<1e-3", "histogram"]
    assert "--wide" not in out
    _assert_every_name_readable(out, report, 80, whole=True)


def test_profile_table_ellipsizes_long_names_in_the_middle(capsys):
    from wcompress.render import profile_table

    deep = "encoder/" + "/".join(f"block_{i}" for i in range(30)) + "/attention/query/kernel"
    rows = [{"name": deep, "layer": "encoder", "role": "kernel", "shape": [512, 512], "dtype": "float32",
             "params": 262_144, "bytes": 1_048_576, "share": 0.5, "zeros": 0, "min": -1.0, "max": 1.0,
             "span": 2.0, "std": 0.5, "small": 3, "hist": [1] * 16},
            {"name": "x" * 300, "layer": "x" * 300, "role": "bias", "shape": [], "dtype": "float16",
             "params": 1, "bytes": 2, "share": 0.0, "zeros": 1}]
    profile = {"path": "m.ckpt", "format": "tf1-checkpoint", "order": "graph", "file_bytes": 10, "tensors": rows,
               "totals": {"params": 262_145, "params_with_training_state": 262_145, "model_bytes": 1_048_578,
                          "optimizer_bytes": 0, "training_state_bytes": 0, "tensors_holding_98pct": 1,
                          "model_tensors": 2}}
    for columns in (80, 120, 200):
        profile_table(profile, width=columns)
        out = capsys.readouterr().out
        assert max(len(line) for line in out.splitlines()) <= columns
        _, table = _table_rows(out)
        (cell, _), = [(c, t) for c, t in table if t and "kernel" in c]
        assert cell.startswith("…") and cell.endswith("query/kernel") and deep.endswith(cell[1:])
        assert len(cell) >= min(columns - 60, 32)  # the name keeps the room the essential columns leave
