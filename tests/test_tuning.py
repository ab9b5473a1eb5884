"""sweep and autotune on real models: in-memory variants equal stock-loaded files, per-method grids, the
held-out part, and plans that replay bit for bit."""

import os

import numpy as np
import pytest
from helpers import run_cli, run_error, run_json, split_labelled, stock_tensors

from wcompress.errors import WcompressError


def _predictions_both_ways(model, data, variant_options, reference=None, graph=()):
    """The same variant predicted in memory and from a stock-loaded file written in RAM."""
    from wcompress.workflows.scoring import EvalSpec, LoadedModel
    from wcompress.workflows.variants import Variant, _predict_from_file, evaluator_for
    from wcompress.methods.runner import run_in_memory

    spec = EvalSpec(data=str(data), metric="fidelity", reference=str(reference or model),
                    input_names=tuple(graph[:1]), output_name=graph[1] if graph else None)
    evaluator = evaluator_for(spec)
    loaded = evaluator.loaded(str(model))
    out = []
    for method, options in variant_options:
        _, changed = run_in_memory(loaded.store, [Variant.of(str(model), method, **options).sparsifier()])
        assert changed and loaded.supports(changed), "every changed tensor is matched to one variable"
        memory = loaded.predict(changed, evaluator.data, 256)
        disk = _predict_from_file(evaluator, loaded.store, changed)
        out.append((memory, disk))
    dense = loaded.predict({}, evaluator.data, 256)  # the dense values are back afterwards
    return out, dense, evaluator.predict(str(model))


@pytest.mark.parametrize("case", ["fer", "mhc", "tf1"])
def test_in_memory_variants_equal_stock_loaded_files(case, real, faces, mhc, tiny, tmp_path):
    graph = ()
    if case == "fer":
        model, data = real["fer"], faces["data"]
    elif case == "mhc":
        model, data = mhc["ba"], mhc["data"]
    else:
        model, data = tiny["tf1"], tmp_path / "x.npz"
        np.savez(data, x=np.random.RandomState(0).rand(16, 10).astype("float32"))
        graph = ("input:0", "output:0")
    variants = [("relative", {"delta": 0.5, "min_size": 0}), ("flat", {"delta": 0.4}),
                ("triangular", {"dconv": 0.05, "dfc": 0.1})]
    pairs, dense, from_file = _predictions_both_ways(model, data, variants, graph=graph)
    for memory, disk in pairs:
        assert memory.dtype == disk.dtype and np.array_equal(memory, disk)
    assert np.array_equal(dense, from_file)
    assert not np.array_equal(pairs[0][0], dense)


def test_sweep_grids_per_method_and_default_fidelity(real, faces):
    result = run_json("sweep", real["fer"], "--data", faces["data"], "--methods", "flat,relative",
                      "--deltas", "flat=0.2,0.4,relative=0:0.6:0.3")
    assert result["metric"] == "fidelity" and result["reference"] == real["fer"] and result["examples"] == 101
    assert [(r["method"], r["delta"]) for r in result["rows"]] == [
        ("flat", 0.2), ("flat", 0.4), ("relative", 0.0), ("relative", 0.3), ("relative", 0.6)]
    assert result["rows"][2]["value"] == 1.0 and result["baseline"] == 1.0


def test_sweep_selection_options(real, faces):
    args = ["sweep", real["fer"], "--data", faces["data"], "--methods", "relative", "--deltas", "0.5"]
    everything = run_json(*args, "--min-size", "0")["rows"][0]
    floor = run_json(*args)["rows"][0]
    only = run_json(*args, "--include", "conv2d_7", "--exclude", "*bias*")["rows"][0]
    assert floor["skipped_small"] > 0 and everything["skipped_small"] == 0
    assert everything["sparsified_params"] > floor["sparsified_params"] > only["sparsified_params"] > 0
    assert only["sparsified_params"] == 3 * 3 * 128 * 7  # conv2d_7's kernel


def test_sweep_packed_bytes_leave_training_state_out(tiny, tmp_path):
    """A sweep's packed bytes are those of the container of the model alone (the TF1 checkpoint holds its
    Adam slots), as `strip` then `sparsify --pack` write it."""
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.RandomState(0).rand(16, 10).astype("float32"))
    graph = ["--input-tensor", "input:0", "--output-tensor", "output:0"]
    row = run_json("sweep", tiny["tf1"], "--data", data, "--methods", "relative", "--deltas", "0.5", *graph)["rows"][0]
    stripped = tmp_path / "s" / "model.ckpt"
    run_cli("strip", tiny["tf1"], "-o", stripped)
    packed = run_json("sparsify", stripped, "--method", "relative", "--delta", "0.5", "--pack",
                      "-o", tmp_path / "c.h5")
    full = run_json("sparsify", tiny["tf1"], "--method", "relative", "--delta", "0.5", "--pack",
                    "-o", tmp_path / "full.h5")
    # The same tensors and encodings: within the few bytes of index text that name the source differently.
    assert abs(row["packed_bytes"] - packed["output_bytes"]) <= 64
    assert full["output_bytes"] - row["packed_bytes"] > 2 * 4 * 10 * 8  # at least Adam's m and v of the kernel


def test_sweep_refuses_labelled_data_without_a_metric(mhc):
    assert "name the metric with --metric" in run_error("sweep", mhc["ba"], "--data", mhc["data"])


def test_parse_grids():
    from wcompress.workflows import parse_grids

    grids = parse_grids("triangular=0:0.02:0.01,relative=0.5", ["flat", "triangular", "relative"])
    assert grids == {"flat": pytest.approx([0.1 * i for i in range(11)]), "triangular": [0.0, 0.01, 0.02],
                     "relative": [0.5]}
    assert parse_grids("0.3,0.6", ["flat", "relative"]) == {"flat": [0.3, 0.6], "relative": [0.3, 0.6]}
    for bad in ("nope=0.1", "0.1,flat=0.2", "flat=2"):
        with pytest.raises(WcompressError):
            parse_grids(bad, ["flat", "relative"])


def test_split_examples_is_fixed_and_disjoint():
    from wcompress.workflows import split_examples

    tune, held = split_examples(101, 0.3)
    assert len(held) == 30 and len(tune) == 71 and not set(tune) & set(held)
    assert sorted(set(tune) | set(held)) == list(range(101))
    again = split_examples(101, 0.3)
    assert np.array_equal(tune, again[0]) and np.array_equal(held, again[1])


@pytest.fixture(scope="module")
def tuned_mhc(mhc, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "tuned.keras"
    result = run_json("autotune", mhc["ba"], "--data", mhc["data"], "--metric", "auc", "--max-drop", "0.05", "-o", out)
    return result, out


def test_autotune_meets_the_budget_on_held_out_examples(tuned_mhc, mhc, tmp_path):
    result, out = tuned_mhc
    tuned = result["tuned"]
    assert result["examples"] == "tuned on 420 examples, judged on 180 held out"
    assert set(result["methods"]) == {"flat", "triangular", "relative"}
    assert result["uniform"]["sparsity"] == max(m["sparsity"] for m in result["methods"].values())
    # Re-measured independently on the held-out examples, from the file written.
    from wcompress.workflows import split_examples
    from wcompress.workflows.metrics import roc_auc

    data = np.load(mhc["data"])
    _, held = split_examples(data["x"].shape[0], 0.3)
    held_file = tmp_path / "held.npz"
    np.savez(held_file, x=data["x"][held], y=data["y"][held])
    dense = run_json("evaluate", mhc["ba"], "--data", held_file, "--metric", "auc")["results"][0]["value"]
    again = run_json("evaluate", out, "--data", held_file, "--metric", "auc")["results"][0]["value"]
    assert again == pytest.approx(tuned["held_out_value"]) and dense == pytest.approx(result["held_out_baseline"])
    assert tuned["within_budget"] and again >= 0.95 * dense
    assert roc_auc(data["y"][held], data["y"][held]) == 1.0
    assert tuned["sparsity"] > 0.3
    # The uniform comparison is judged the same way: re-made by sparsify and re-measured on the held-out part.
    judged = result["uniform_held_out"]
    delta = repr(judged["delta"])
    options = ["--dconv", delta, "--dfc", delta] if judged["method"] == "triangular" else ["--delta", delta]
    run_cli("sparsify", mhc["ba"], "--method", judged["method"], *options, "-o", tmp_path / "uniform.keras")
    uniform = run_json("evaluate", tmp_path / "uniform.keras", "--data", held_file, "--metric", "auc")
    assert uniform["results"][0]["value"] == pytest.approx(judged["held_out_value"])
    assert judged["held_out_value"] >= 0.95 * dense and judged["sparsity"] <= result["uniform"]["sparsity"]
    assert result["gain"] == pytest.approx(tuned["sparsity"] - judged["sparsity"])
    # The plan reproduces the same tensors bit for bit.
    replay = tmp_path / "replay.keras"
    run_cli("sparsify", mhc["ba"], "--plan", result["plan"], "-o", replay)
    a, b = stock_tensors(out), stock_tensors(replay)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_autotune_jobs_2_equals_jobs_1(tuned_mhc, mhc, tmp_path):
    result, _ = tuned_mhc
    two = run_json("autotune", mhc["ba"], "--data", mhc["data"], "--metric", "auc", "--max-drop", "0.05",
                   "--jobs", "2", "-o", tmp_path / "two.keras")
    # The same answer; two processes may evaluate one more ladder level past the first failure.
    for key in ("uniform", "uniform_held_out", "methods", "tuned", "plan"):
        assert two[key] == result[key] or key == "plan"
    assert open(two["plan"]).read() == open(result["plan"]).read()


def test_autotune_validation_file_and_bytes_target(mhc, tmp_path):
    tune, check = split_labelled(mhc["data"], 400, tmp_path)
    out = tmp_path / "small.h5"
    result = run_json("autotune", mhc["ba"], "--data", tune, "--validation", check, "--metric", "auc",
                      "--max-drop", "0.05", "--target", "bytes", "--pack", "--max-layers", "0", "-o", out)
    assert result["examples"].startswith("tuned on 400 examples") and "200 of" in result["examples"]
    assert result["target"] == "bytes" and result["output_bytes"] == os.path.getsize(out)
    assert result["tuned"]["within_budget"]
    restored = run_json("restore", out, "-o", tmp_path / "r.keras")
    again = run_json("evaluate", restored["output"], "--data", check, "--metric", "auc")["results"][0]["value"]
    assert again == pytest.approx(result["tuned"]["held_out_value"])
