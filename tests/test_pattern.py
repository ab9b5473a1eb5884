"""sparsify --pattern N:M: N kept in every group of M inputs, for magnitude, wanda and sparsegpt; the
container's nm encoding stores the choice in log2 C(M, N) bits per group, below a bitmask."""

import itertools
import json
import numpy as np
import pytest
from helpers import run_cli, run_error, run_json, sparsified_figures, stock_tensors

from wcompress.formats.container import coders, encodings
from wcompress.methods.pruning import keep_n_of_m


def groups_along_inputs(kernel, m):
    """(groups, M): every M consecutive inputs of one output channel, the inputs being the kernel's rows
    read as a product reads them (all axes but the last, row-major: input channels fastest)."""
    return kernel.reshape(-1, kernel.shape[-1]).T.reshape(-1, m)


@pytest.fixture(scope="module")
def calibration(faces, tmp_path_factory):
    path = tmp_path_factory.mktemp("pattern") / "calib.npz"
    np.savez(path, x=np.load(faces["data"])["x"][:40])
    return str(path)


def test_keep_n_of_m_matches_the_definition():
    rng = np.random.default_rng(0)
    scores = rng.random((24, 5))
    keep = keep_n_of_m(scores, (3, 8))
    for column in range(5):
        for start in range(0, 24, 8):
            group = scores[start:start + 8, column]
            assert set(np.flatnonzero(keep[start:start + 8, column])) == set(np.argsort(group)[-3:])


@pytest.mark.parametrize("shape,pattern,dtype", [((64, 32), (2, 4), "float32"), ((3, 3, 16, 8), (2, 4), "float16"),
                                                 ((40, 6), (1, 8), "int8"), ((30, 7), (2, 3), "float32"),
                                                 ((320, 3), (5, 16), "float32")])
def test_nm_encoding_round_trips_and_beats_the_bitmask(shape, pattern, dtype):
    rng = np.random.default_rng(1)
    weights = (rng.standard_normal(shape) * 50).astype(dtype)
    rows = weights.reshape(-1, shape[-1])
    sparse = np.where(keep_n_of_m(np.abs(rows.astype(np.float64)), pattern), rows, 0).reshape(shape)
    sparse.reshape(-1)[:3] = 0  # groups holding fewer than N non-zeros
    sizes, nnz, found = encodings.sizes(sparse, dtype, encodings.GROUP_SIZES + (pattern[1],))
    assert found == pattern and sizes["nm"] < sizes["bitmask"]
    streams = encodings.encode(sparse, "nm", dtype, found)
    lengths = encodings.stream_lengths("nm", shape, nnz, None, list(found))
    assert {k: v.size for k, v in streams.items()} == lengths
    assert sum(s.nbytes for s in streams.values()) == sizes["nm"]
    decoded = encodings.decode("nm", streams, shape, dtype, pattern=list(found))
    assert decoded.dtype == np.dtype(dtype) and np.array_equal(decoded, sparse)


def test_nm_decoder_refuses_inconsistent_streams():
    from wcompress.errors import WcompressError

    sparse = np.zeros((8, 3), np.float32)
    sparse[::4] = 1.0
    streams = encodings.encode(sparse, "nm", np.float32, (1, 4))
    junk = dict(streams, choice=streams["choice"] + np.uint64(4 ** 6))  # a digit past the 6 groups
    with pytest.raises(WcompressError, match="more digits"):
        encodings.decode("nm", junk, (8, 3), np.float32, pattern=[1, 4])
    with pytest.raises(WcompressError, match="pattern"):
        encodings.stream_lengths("nm", (6, 3), 6, None, [1, 4])  # 6 rows are not groups of 4
    with pytest.raises(WcompressError, match="pattern"):
        encodings.stream_lengths("nm", (8, 3), 6, None, [4, 4])


@pytest.mark.parametrize("method", ["relative", "wanda", "sparsegpt"])
@pytest.mark.parametrize("suffix", [".hdf5", ".keras"])
def test_every_eligible_kernel_keeps_exactly_n_of_m_in_the_stock_loaded_output(real, calibration, tmp_path,
                                                                                method, suffix):
    import keras

    out = tmp_path / f"fer-{method}{suffix}"
    extra = ["--data", calibration] if method != "relative" else []
    result = run_json("sparsify", real["fer"], "--method", method, "--pattern", "2:4", "-o", out, *extra)
    summary = result["sparsify"]
    assert summary["pattern"] == "2:4" and summary["eligible_sparsity"] == 0.5
    dense = keras.models.load_model(real["fer"], compile=False)
    model = keras.models.load_model(out, compile=False)
    checked = 0
    for layer in model.layers:
        for kernel, original in zip(layer.get_weights(), dense.get_layer(layer.name).get_weights()):
            if kernel.ndim < 2:
                continue
            if (kernel.size // kernel.shape[-1]) % 4 or kernel.shape[-1] == 1 or kernel.size < summary["min_size"]:
                # inputs not a multiple of 4, a depthwise kernel, or below the size floor
                assert np.array_equal(kernel, original), layer.name
                continue
            counts = np.count_nonzero(groups_along_inputs(kernel, 4), axis=1)
            assert np.all(counts == 2), (layer.name, np.bincount(counts))
            if method != "sparsegpt":  # sparsegpt updates the weights it keeps
                kept = kernel != 0
                assert np.array_equal(kernel[kept], original[kept])
            checked += 1
    assert checked == len(summary["sparsity"]) >= 8
    assert summary["pattern_skipped"]  # depthwise kernels: no input channels to group


def test_a_pattern_with_wanda_keeps_more_than_magnitude(real, faces, calibration, tmp_path):
    cosine = {method: sparsified_figures(real["fer"], faces["data"], tmp_path / f"{method}.hdf5", "--method", method,
                                         "--pattern", "2:4", *extra)["cosine"]
              for method, extra in (("wanda", ["--data", calibration]), ("relative", []))}
    assert cosine["wanda"] > cosine["relative"]


def test_container_stores_the_pattern_below_a_bitmask_and_restores_it(real, tmp_path):
    import keras

    packed = tmp_path / "fer.wcz"
    run_cli("sparsify", real["fer"], "--method", "relative", "--pattern", "2:4", "--pack", "--values", "float16",
            "-o", packed)
    report = run_json("report", packed, "--no-gzip")
    nm_rows = [r for r in report["tensors"] if r["encoding"] == "nm 2:4"]
    assert len(nm_rows) >= 5
    restored = tmp_path / "back.hdf5"
    run_cli("restore", packed, "-o", restored)
    tensors = stock_tensors(restored)
    for row in nm_rows:
        name = next(n for n in tensors if n.endswith(row["name"]) or row["name"].endswith(n))
        kernel = tensors[name]
        assert np.all(np.count_nonzero(groups_along_inputs(kernel, 4), axis=1) == 2)
        # The same tensor as a bitmask, each stream coded by its smallest coder: more bytes.
        bitmask = encodings.encode(kernel.astype(np.float16), "bitmask", np.float16)
        bitmask_bytes = sum(coders.smallest(s)[1].nbytes for s in bitmask.values())
        assert row["stored_bytes"] < bitmask_bytes, row["name"]
        # The bound counts log2 C(4, 2) bits per group for the positions.
        assert row["bound_bytes"] == pytest.approx(
            (kernel.size / 4 * np.log2(6) + row["nonzeros"] * 16) / 8)
    keras.models.load_model(restored, compile=False)


def test_pattern_on_a_tf1_checkpoint_skips_kernels_with_other_input_counts(tiny, tmp_path):
    import tensorflow as tf

    out = tmp_path / "ckpt" / "model.ckpt"
    summary = run_json("sparsify", tiny["tf1"], "--method", "relative", "--pattern", "2:4", "--min-size", "0",
                       "-o", out)["sparsify"]
    assert summary["pattern_skipped"] == ["fc1/kernel"]  # 10 inputs
    reader = tf.train.load_checkpoint(str(out))
    fc2 = reader.get_tensor("fc2/kernel")  # 24 inputs x 4 outputs
    assert np.all(np.count_nonzero(groups_along_inputs(fc2, 4), axis=1) == 2)
    original = tf.train.load_checkpoint(tiny["tf1"])
    assert np.array_equal(reader.get_tensor("fc1/kernel"), original.get_tensor("fc1/kernel"))


def test_pattern_refusals(real, calibration, tmp_path):
    fer = real["fer"]
    assert "0 < N < M" in run_error("sparsify", fer, "--method", "relative", "--pattern", "4:4", "-o", tmp_path / "a.h5")
    assert "0 < N < M" in run_error("sparsify", fer, "--method", "relative", "--pattern", "2-4", "-o", tmp_path / "a.h5")
    assert "fixes the sparsity at 0.5" in run_error("sparsify", fer, "--method", "relative", "--pattern", "2:4",
                                                    "--sparsity", "0.5", "-o", tmp_path / "b.h5")
    assert "use relative" in run_error("sparsify", fer, "--method", "flat", "--pattern", "2:4", "-o", tmp_path / "c.h5")
    assert "--groups layer" in run_error("sparsify", fer, "--method", "wanda", "--pattern", "2:4", "--groups", "layer",
                                         "--data", calibration, "-o", tmp_path / "d.h5")
    assert not list(tmp_path.iterdir())


def test_pattern_tables_cover_every_combination():
    for n, m in itertools.product(range(1, 6), range(2, 9)):
        if n >= m:
            continue
        combos, rank = encodings.nm_tables(n, m)
        masks = (1 << combos).sum(axis=1)
        assert len(set(masks.tolist())) == len(combos) and np.array_equal(rank[masks], np.arange(len(combos)))
        assert (rank >= 0).sum() == len(combos)


def test_sweep_rows_for_patterns_equal_the_files_sparsify_writes(real, faces, calibration, tmp_path):
    held = tmp_path / "held.npz"
    np.savez(held, x=np.load(faces["data"])["x"][40:])
    result = run_json("sweep", real["fer"], "--data", held, "--methods", "flat,relative,wanda", "--deltas", "0.1",
                      "--pattern", "2:4,1:8", "--calibration", calibration)
    settings = [(r["method"], r["pattern"] or r["delta"]) for r in result["rows"]]
    assert settings == [("flat", 0.1), ("relative", 0.1), ("relative", "2:4"), ("relative", "1:8"),
                        ("wanda", 0.1), ("wanda", "2:4"), ("wanda", "1:8")]
    row = next(r for r in result["rows"] if r["method"] == "wanda" and r["pattern"] == "1:8")
    out = tmp_path / "w.hdf5"
    run_cli("sparsify", real["fer"], "--method", "wanda", "--pattern", "1:8", "--data", calibration, "-o", out)
    written = {r["metric"]: r["value"] for r in run_json("evaluate", out, "--data", held, "--reference", real["fer"],
                                                         "--metric", "fidelity")["results"]}
    assert row["value"] == written["fidelity"]
    assert "keeps N of M" in run_error("sweep", real["fer"], "--data", held, "--methods", "flat", "--pattern", "2:4")


def test_autotune_chooses_the_layers_that_take_the_pattern_and_its_plan_replays(mhc, tmp_path):
    import keras

    out = tmp_path / "t.keras"
    # A tight budget (1% of AUC): 2:4 on every layer costs mhcnuggets more, so some layers stay dense.
    result = run_json("autotune", mhc["ba"], "--data", mhc["data"], "--metric", "auc", "--max-drop", "0.01",
                      "--pattern", "2:4", "-o", out)
    tuned = result["tuned"]
    assert tuned["pattern"] == "2:4" and tuned["within_budget"]
    plan = json.load(open(result["plan"]))
    assert plan["pattern"] == "2:4" and plan["tensors"]
    everywhere = result["uniform"]
    assert 0 < tuned["sparsity"] < everywhere["sparsity"]
    model, dense = keras.models.load_model(out), keras.models.load_model(mhc["ba"])
    for stored, original in zip(model.weights, dense.weights):
        array, before = stored.numpy(), original.numpy()
        if np.array_equal(array, before):
            continue
        assert np.all(np.count_nonzero(groups_along_inputs(array, 4), axis=1) == 2), stored.path
    replay = tmp_path / "replay.keras"
    run_cli("sparsify", mhc["ba"], "--plan", result["plan"], "-o", replay)
    a, b = stock_tensors(out), stock_tensors(replay)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
