import json

import numpy as np
import pytest
from helpers import run_cli, run_json

from wcompress.io import open_model
from wcompress.profile import tensor_stats

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
    assert stats["std"] == pytest.approx(float(values.astype(np.float64).std()), rel=1e-6)
    assert sum(stats["hist"]) == 8


def test_profile_stats_match_numpy_on_real_tensor(real):
    store = open_model(real["musicnn"])
    report = run_json("profile", real["musicnn"])
    row = max(report["tensors"], key=lambda r: r["params"])
    array = store.load(row["name"]).astype(np.float64)
    assert row["min"] == array.min() and row["max"] == array.max()
    assert row["std"] == pytest.approx(array.std(), rel=1e-5)
    assert row["small"] == int((np.abs(array) < 1e-3).sum())


def test_plot_writes_png(real, tmp_path):
    png = tmp_path / "hist.png"
    run_cli("profile", real["fer"], "--plot", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_json_is_valid_json(real):
    text = run_cli("profile", real["basic-pitch"], "--json").stdout
    assert json.loads(text)["totals"]["params"] == 16_864
