"""sparsify: thresholds computed here independently from the tensors, and counted in the outputs."""

import os
import shutil

import numpy as np
import pytest
from helpers import digest, run_cli, run_error, run_json, stock_tensors

ELIGIBLE = ("kernel", "recurrent_kernel", "embedding")


def roles(path):
    return {t["name"]: (t["role"], t["layer"]) for t in run_json("profile", path)["tensors"]}


def ckpt_out(tmp_path, name="out"):
    return str(tmp_path / name) + "/"


def _src(real, tiny, key):
    return real[key] if key in real else tiny[key]


@pytest.mark.parametrize("key", ["musicnn", "musicnn-vgg", "fer", "basic-pitch", "mhcnuggets", "keras",
                                 "weights_h5", "tf2", "tf1"])
def test_relative_half_in_every_eligible_tensor(real, tiny, tmp_path, key):
    src = _src(real, tiny, key)
    kind = run_json("profile", src)["format"]
    dest = ckpt_out(tmp_path) if kind.endswith("checkpoint") else str(tmp_path / ("out_" + os.path.basename(src)))
    result = run_json("sparsify", src, "--method", "relative", "--delta", "0.5", "-o", dest)
    before = stock_tensors(src if not kind == "tf1-checkpoint" or os.path.exists(src + ".index") else src + "/")
    after = stock_tensors(result["output"])
    info = roles(src)
    checked = 0
    for name, (role, _) in info.items():
        if role in ELIGIBLE and after[name].size > 1:
            zeros = int((after[name] == 0).sum())
            n = after[name].size
            assert abs(zeros - 0.5 * n) <= max(0.005 * n, 1), (name, zeros, n)
            kept = after[name] != 0
            assert np.array_equal(after[name][kept], before[name][kept])  # survivors unchanged
            checked += 1
        else:
            assert np.array_equal(after[name], before[name]), name  # biases, BN, slots untouched
    assert checked >= 2
    assert result["sparsify"]["eligible_sparsity"] == pytest.approx(0.5, abs=0.01)


def _layer_spans(tensors, info):
    spans = {}
    for name, (role, layer) in info.items():
        if role in ELIGIBLE and tensors[name].size > 1:
            lo, hi = spans.get(layer, (np.inf, -np.inf))
            spans[layer] = (min(lo, float(tensors[name].min())), max(hi, float(tensors[name].max())))
    return {layer: hi - lo for layer, (lo, hi) in spans.items()}


def _expected(tensors, thresholds):
    return {k: np.where(np.abs(v) <= thresholds[k], 0, v).astype(v.dtype) if k in thresholds else v
            for k, v in tensors.items()}


def test_flat_matches_independent_thresholds(real, tmp_path):
    src = real["musicnn"]
    tensors, info = stock_tensors(src + "/"), roles(src)
    sigma_min = min(_layer_spans(tensors, info).values())
    result = run_json("sparsify", src, "--method", "flat", "--delta", "0.2", "-o", ckpt_out(tmp_path))
    thresholds = {n: 0.2 * sigma_min for n, (r, _) in info.items() if r in ELIGIBLE}
    assert result["sparsify"]["thresholds"] == pytest.approx(thresholds)
    expected = _expected(tensors, thresholds)
    after = stock_tensors(result["output"])
    for name in after:
        assert np.array_equal(after[name], expected[name]), name


def test_triangular_matches_independent_interpolation(tiny, tmp_path):
    src = tiny["keras"]
    tensors, info = stock_tensors(src), roles(src)
    spans = _layer_spans(tensors, info)
    order = ["hidden", "hidden2", "head"]  # the model's own order, as built in conftest
    first, last = spans["hidden"] * 0.1, spans["head"] * 0.3
    tau = {layer: first + (last - first) * i / 2 for i, layer in enumerate(order)}
    thresholds = {n: tau[layer] for n, (r, layer) in info.items() if r in ELIGIBLE}
    out = tmp_path / "tri.keras"
    result = run_json("sparsify", src, "--method", "triangular", "--dconv", "0.1", "--dfc", "0.3", "-o", out)
    assert result["sparsify"]["thresholds"] == pytest.approx(thresholds)
    after, expected = stock_tensors(out), _expected(tensors, thresholds)
    for name in after:
        assert np.array_equal(after[name], expected[name]), name


def test_design_card_example_verbatim(tiny, tmp_path, monkeypatch):
    """`wcompress sparsify model.ckpt --method triangular --dconv 0.1 --dfc 0.3`, as the card writes it."""
    folder = tmp_path / "work"
    folder.mkdir()
    for f in os.listdir(os.path.dirname(tiny["tf1"])):
        if f.startswith("model.ckpt."):
            shutil.copy(os.path.join(os.path.dirname(tiny["tf1"]), f), folder)
    monkeypatch.chdir(folder)
    out = run_cli("sparsify", "model.ckpt", "--method", "triangular", "--dconv", "0.1", "--dfc", "0.3").stdout
    assert "model.sparse.ckpt" in out
    tensors = stock_tensors(str(folder / "model.sparse.ckpt"))
    original = stock_tensors(str(folder / "model.ckpt"))
    w1, w2 = original["fc1/kernel"], original["fc2/kernel"]
    t1 = (w1.max() - w1.min()) * 0.1
    t2 = (w2.max() - w2.min()) * 0.3
    assert np.array_equal(tensors["fc1/kernel"], np.where(np.abs(w1) <= t1, 0, w1))
    assert np.array_equal(tensors["fc2/kernel"], np.where(np.abs(w2) <= t2, 0, w2))
    assert np.array_equal(tensors["fc1/bias"], original["fc1/bias"])


def test_dry_run_plan_reproduces_bit_for_bit(real, tmp_path):
    src = real["fer"]
    plan = tmp_path / "plan.yaml"
    before = set(os.listdir(tmp_path))
    dry = run_json("sparsify", src, "--method", "relative", "--delta", "0.6", "--layer", "conv2d_1=0.2",
                   "--dry-run", "--plan", plan)
    assert set(os.listdir(tmp_path)) - before == {"plan.yaml"}
    assert dry["sparsify"]["sparsity"]["model_weights/conv2d_1/conv2d_1_1/kernel:0"] == pytest.approx(0.2, abs=0.02)
    a = run_json("sparsify", src, "--method", "relative", "--delta", "0.6", "--layer", "conv2d_1=0.2",
                 "-o", tmp_path / "a.h5")
    b = run_json("sparsify", src, "--plan", plan, "-o", tmp_path / "b.h5")
    ta, tb = stock_tensors(a["output"]), stock_tensors(b["output"])
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)
    assert a["sparsify"]["zeros"] == b["sparsify"]["zeros"] == dry["sparsify"]["zeros"]


def test_include_exclude_and_model_sparsity_counted(tiny, tmp_path):
    out = tmp_path / "x.keras"
    result = run_json("sparsify", tiny["keras"], "--method", "relative", "--sparsity", "0.9",
                      "--exclude", "head", "-o", out)
    after = stock_tensors(out)
    assert not (after["layers/dense_2/vars/0"] == 0).any()  # head excluded
    assert (after["layers/dense/vars/0"] == 0).mean() == pytest.approx(0.9, abs=0.01)
    counted = sum(int((v == 0).sum()) for k, v in after.items() if k.startswith("layers/"))
    assert counted == sum(t["zeros"] for t in result["tensors"] if t["name"].startswith("layers/"))


@pytest.mark.parametrize("args,needle", [
    (["--method", "relative", "--delta", "1.5"], "--delta must be in [0, 1]"),
    (["--method", "flat", "--delta", "-0.1"], "--delta must be in [0, 1]"),
    (["--method", "pyramid", "--delta", "0.5"], "unknown pass 'pyramid'"),
    (["--method", "strip"], "not a sparsification method"),
    (["--method", "triangular", "--dconv", "0.1"], "triangular needs both --dconv and --dfc"),
    (["--method", "relative", "--delta", "0.5", "--include", "nothing*"], "no eligible tensor"),
    (["--method", "relative", "--delta", "0.5", "--layer", "oops"], "GLOB=DELTA"),
])
def test_bad_sparsify_input(tiny, tmp_path, args, needle):
    before = digest(tiny["keras"])
    line = run_error("sparsify", tiny["keras"], *args, "-o", tmp_path / "o.keras")
    assert needle in line
    assert not os.path.exists(tmp_path / "o.keras")
    assert digest(tiny["keras"]) == before


def test_unknown_option_value_is_one_line(tiny, tmp_path):
    line = run_error("sparsify", tiny["keras"], "--method", "relative", "--delta", "half", "-o", tmp_path / "o")
    assert "half" in line
