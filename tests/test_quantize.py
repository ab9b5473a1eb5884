"""pack --values int8|int4: per-output-channel integer codes in the container, restored dequantized into
the stock format (lossy, and said so)."""

import json
import lzma
import os
import zlib

import h5py
import numpy as np
import pytest
from helpers import MUSICNN_IN, MUSICNN_OUT, musicnn_feed, run_cli, run_error, run_json, stock_tensors, tf1_predict


def reference_quantize(w, levels):
    """From the definition: per output channel (the last axis; the one before it where the last has size 1,
    as in depthwise kernels), scale = max|w| / levels, codes = round(w / scale)."""
    axis = w.ndim - 2 if w.shape[-1] == 1 else w.ndim - 1
    out = np.empty_like(w)
    for c in range(w.shape[axis]):
        index = (slice(None),) * axis + (c,)
        channel = w[index]
        scale = np.float32(np.abs(channel).max() / levels) if np.abs(channel).max() > 0 else np.float32(1)
        out[index] = np.clip(np.rint(channel / scale), -levels, levels) * scale
    return out


@pytest.fixture(scope="module")
def quantized_fer(real, tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized")
    out = {}
    for values in ("int8", "int4"):
        container = root / f"fer-{values}.h5"
        run_cli("pack", real["fer"], "-o", container, "--values", values)
        restored = root / f"fer-{values}.hdf5"
        result = run_cli("restore", container, "-o", restored)
        assert f"stored as {values} codes" in result.stderr and "dequantized" in result.stderr
        out[values] = (container, restored)
    return out


@pytest.mark.parametrize("values,levels", [("int8", 127), ("int4", 7)])
def test_restored_tensors_are_the_dequantized_codes(real, quantized_fer, values, levels):
    original = stock_tensors(real["fer"])
    restored = stock_tensors(str(quantized_fer[values][1]))
    assert sorted(original) == sorted(restored)
    quantized = 0
    for name, w in original.items():
        if w.dtype.kind == "f" and w.ndim >= 2 and w.size:
            np.testing.assert_allclose(restored[name], reference_quantize(w, levels), rtol=1e-6, atol=1e-12)
            quantized += 1
        else:  # biases, normalisation: exact
            assert np.array_equal(restored[name], w), name
    assert quantized > 10


def test_int8_fer_predicts_like_the_dense_model(real, quantized_fer, faces):
    results = {r["metric"]: r["value"] for r in run_json(
        "evaluate", quantized_fer["int8"][1], "--data", faces["data"], "--reference", real["fer"])["results"]}
    # Measured on these 101 faces: fidelity 0.980, largest probability change 0.032.
    assert results["fidelity"] >= 0.97 and results["maxdiff"] <= 0.05


def test_container_bytes_and_bits_per_weight(real, quantized_fer):
    dense = run_json("report", real["fer"], "--no-gzip")["totals"]
    for values, most_bits in (("int8", 8.5), ("int4", 4.6)):  # codes, scales, float biases
        report = run_json("report", quantized_fer[values][0], "--no-gzip")
        totals = report["totals"]
        assert totals["bits_per_weight"] == pytest.approx(8 * totals["tensor_stored_bytes"] / sum(
            r["elements"] for r in report["tensors"]))
        assert totals["bits_per_weight"] <= most_bits
        assert totals["file_bytes"] < (0.30 if values == "int8" else 0.17) * dense["file_bytes"]
        assert {r["value_dtype"] for r in report["tensors"]} >= {values, "float32"}


def test_int8_musicnn_restores_to_a_stock_tf1_checkpoint(real, tmp_path):
    container = tmp_path / "m.h5"
    run_cli("pack", real["musicnn"], "-o", container, "--values", "int8")
    restored = run_json("restore", container, "-o", str(tmp_path / "r") + "/")["output"]
    feed = musicnn_feed()
    dense = tf1_predict(real["musicnn"] + "/.meta", real["musicnn"] + "/", feed, MUSICNN_OUT)
    again = tf1_predict(restored + ".meta", restored, feed, MUSICNN_OUT)
    assert np.abs(again - dense).max() <= 0.05


def test_sparse_tensors_keep_their_zeros(real, tmp_path):
    sparse = tmp_path / "sparse.hdf5"
    run_cli("sparsify", real["fer"], "--method", "relative", "--delta", "0.5", "-o", sparse)
    container = tmp_path / "s.h5"
    run_cli("pack", sparse, "-o", container, "--values", "int8")
    restored = tmp_path / "r.hdf5"
    run_cli("restore", container, "-o", restored)
    before, after = stock_tensors(str(sparse)), stock_tensors(str(restored))
    for name, w in before.items():
        assert np.all(after[name][w == 0] == 0), name


def test_crafted_quantization_fields_are_errors(quantized_fer, tmp_path):
    container = quantized_fer["int8"][0]
    with h5py.File(container) as h5:
        index = json.loads(lzma.decompress(h5["index"][()].tobytes()))
    target = next(e for e in index["tensors"] if e.get("quantized"))
    for problem, change in {"bits": {"quantized": {"bits": 3, "axis": len(target["shape"]) - 1}},
                            "axis": {"quantized": {"bits": 8, "axis": 0}},
                            "scales": {"drop": "scales"}}.items():
        crafted = json.loads(json.dumps(index))
        entry = next(e for e in crafted["tensors"] if e["name"] == target["name"])
        if "drop" in change:
            del entry["streams"][change["drop"]]
        else:
            entry.update(change)
        copy = tmp_path / f"{problem}.h5"
        copy.write_bytes(container.read_bytes())
        with h5py.File(copy, "r+") as h5:
            packed = np.frombuffer(lzma.compress(json.dumps(crafted).encode()), dtype=np.uint8)
            del h5["index"]
            h5["index"] = packed
            h5.attrs["index_crc32"] = zlib.crc32(packed.tobytes())
        message = run_error("restore", copy, "-o", tmp_path / f"{problem}.hdf5")
        assert target["name"] in message


# --- calibration: GPTQ-style rounding -------------------------------------------------------------

def _im2col(x, k, padding):
    """Patches of a (n, h, w, c) batch for a k x k window at stride 1, rows ordered (row, column, channel)."""
    if padding == "same":
        x = np.pad(x, ((0, 0), (k // 2, (k - 1) // 2), (k // 2, (k - 1) // 2), (0, 0)))
    n, h, w, c = x.shape
    return np.array([x[i, r:r + k, s:s + k, :].reshape(-1) for i in range(n)
                     for r in range(h - k + 1) for s in range(w - k + 1)])


@pytest.fixture(scope="module")
def small_keras(tmp_path_factory):
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.SeparableConv2D(5, 3, name="sep")(x)
    outputs = keras.layers.Dense(6, name="head")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    path = tmp_path_factory.mktemp("small") / "small.keras"
    model.save(path)
    data = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(data, x=np.random.default_rng(3).standard_normal((12, 8, 8, 3)).astype("float32"))
    return model, str(path), str(data)


def test_captured_input_statistics_match_their_definition(small_keras):
    import keras

    from wcompress.runtime.capture import input_hessians

    model, path, data = small_keras
    x = np.load(data)["x"]
    hessians = input_hessians(path, data, batch_size=5)
    # .keras names weights layers/<class in snake case>/vars/<i>
    assert sorted(hessians) == ["layers/conv2d/vars/0", "layers/dense/vars/0", "layers/separable_conv2d/vars/0",
                                "layers/separable_conv2d/vars/1"]
    inputs = keras.Model(model.inputs, [model.get_layer(n).input for n in ("conv", "sep", "head")]).predict(x, verbose=0)

    def gram(rows):
        rows = rows.astype(np.float64)
        return rows.T @ rows / len(rows)

    np.testing.assert_allclose(hessians["layers/conv2d/vars/0"], gram(_im2col(inputs[0], 3, "same")), rtol=2e-4, atol=1e-4)
    sep = model.get_layer("sep")
    patches = _im2col(inputs[1], 3, "valid").reshape(-1, 9, 4)
    depthwise = hessians["layers/separable_conv2d/vars/0"]
    for c in range(4):
        np.testing.assert_allclose(depthwise[c], gram(patches[:, :, c]), rtol=2e-4, atol=1e-4)
    inner = np.einsum("nkc,kc->nc", patches, sep.depthwise_kernel.numpy().reshape(9, 4))
    pointwise = hessians["layers/separable_conv2d/vars/1"]
    np.testing.assert_allclose(pointwise, gram(inner), rtol=2e-4, atol=1e-4)
    np.testing.assert_allclose(hessians["layers/dense/vars/0"], gram(inputs[2].reshape(len(x), -1)), rtol=2e-4, atol=1e-4)


def test_layer_by_layer_statistics_see_the_kernels_before_them_coded(small_keras):
    """With `values`, each kernel's H is its inputs' second moment in the model whose earlier kernels already hold
    what the container restores (each GPTQ-rounded with its own H): computed here from that definition."""
    import keras

    from wcompress.formats.container.quantization import restored_values
    from wcompress.runtime.capture import input_hessians

    model, path, data = small_keras
    x = np.load(data)["x"]
    hessians = input_hessians(path, data, batch_size=5, values="int4")
    dense = input_hessians(path, data, batch_size=5)
    names = {"conv": "layers/conv2d/vars/0", "depthwise": "layers/separable_conv2d/vars/0",
             "pointwise": "layers/separable_conv2d/vars/1", "head": "layers/dense/vars/0"}
    assert sorted(hessians) == sorted(names.values())
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    conv, sep, head = (copy.get_layer(n) for n in ("conv", "sep", "head"))

    def gram(rows):
        rows = rows.astype(np.float64)
        return rows.T @ rows / len(rows)

    def coded(variable, name):
        variable.assign(restored_values(variable.numpy(), "int4", hessians[name]))

    def inputs_of(layer):
        return keras.Model(copy.inputs, layer.input).predict(x, verbose=0)

    np.testing.assert_array_equal(hessians[names["conv"]], dense[names["conv"]])  # the first sees the data alone
    coded(conv.kernel, names["conv"])
    patches = _im2col(inputs_of(sep), 3, "valid").reshape(-1, 9, 4)
    for c in range(4):
        np.testing.assert_allclose(hessians[names["depthwise"]][c], gram(patches[:, :, c]), rtol=2e-4, atol=1e-4)
    assert not np.allclose(hessians[names["depthwise"]], dense[names["depthwise"]], rtol=1e-3)
    coded(sep.depthwise_kernel, names["depthwise"])
    inner = np.einsum("nkc,kc->nc", patches, sep.depthwise_kernel.numpy().reshape(9, 4))
    np.testing.assert_allclose(hessians[names["pointwise"]], gram(inner), rtol=2e-4, atol=1e-4)
    coded(sep.pointwise_kernel, names["pointwise"])
    np.testing.assert_allclose(hessians[names["head"]], gram(inputs_of(head).reshape(len(x), -1)), rtol=2e-4, atol=1e-4)


def test_layer_by_layer_on_a_tf1_graph_and_the_container_it_writes(tiny, tmp_path):
    """The same on a TF1 graph (x -> relu(x W1 + b1) W2 + b2): W2's H is that of the inputs W1's codes give, and
    `pack --values int4 --data` stores the codes GPTQ chose with it."""
    from wcompress.formats import open_model
    from wcompress.formats.container.quantization import restored_values
    from wcompress.runtime.capture import input_hessians

    x = np.random.default_rng(5).random((40, 10)).astype(np.float32)
    data = tmp_path / "calib.npz"
    np.savez(data, x=x)
    hessians = input_hessians(tiny["tf1"], str(data), values="int4")
    source = open_model(tiny["tf1"])
    w1, b1, w2 = (source.load(n) for n in ("fc1/kernel", "fc1/bias", "fc2/kernel"))
    x = x.astype(np.float64)
    np.testing.assert_allclose(hessians["fc1/kernel"], x.T @ x / len(x), rtol=1e-5)
    hidden = np.maximum(x @ restored_values(w1, "int4", hessians["fc1/kernel"]) + b1, 0)
    np.testing.assert_allclose(hessians["fc2/kernel"], hidden.T @ hidden / len(x), rtol=2e-4, atol=1e-6)
    container = tmp_path / "c.h5"
    run_cli("pack", tiny["tf1"], "--values", "int4", "--data", data, "-o", container)
    assert np.array_equal(open_model(str(container)).load("fc2/kernel"),
                          restored_values(w2, "int4", hessians["fc2/kernel"]))


def test_gptq_rounding_cuts_the_layer_output_error():
    from wcompress.formats.container.quantization import dequantize, gptq, quantize

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 48)) @ rng.standard_normal((48, 48)) + rng.standard_normal((3000, 48))
    w = rng.standard_normal((48, 16)).astype(np.float32)
    w[rng.random(w.shape) < 0.3] = 0  # a pruned kernel keeps its zeros
    for levels in (7, 127):
        codes, scale = gptq(w, x.T @ x / len(x), levels)
        nearest, nearest_scale = quantize(w, levels)
        assert np.array_equal(scale, nearest_scale) and np.abs(codes).max() <= levels
        assert np.all(codes[w == 0] == 0)
        error = np.linalg.norm(x @ w - x @ dequantize(codes, scale, np.float32, 1))
        assert error < 0.9 * np.linalg.norm(x @ w - x @ dequantize(nearest, nearest_scale, np.float32, 1))


def test_a_rounding_is_remembered_for_the_same_weights_and_statistics_only():
    import gc

    from wcompress.formats.container import quantization
    from wcompress.formats.container.quantization import gptq, quantize_calibrated

    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 24))
    w = rng.standard_normal((24, 8)).astype(np.float32)
    hessian = x.T @ x / len(x)
    first = quantize_calibrated(w, hessian, None, 4)
    codes, steps = first
    assert quantize_calibrated(w.copy(), hessian, None, 4) is first  # same content, same statistics
    assert not codes.flags.writeable and not steps.flags.writeable
    for other in (gptq(w, hessian, None, qp=4), quantize_calibrated(w, hessian.copy(), None, 4)):
        assert np.array_equal(other[0], codes) and np.array_equal(other[1], steps)  # equal, computed again
    assert quantize_calibrated(w, hessian, None, 5) is not first and quantize_calibrated(w, hessian, 7) is not first
    changed = w.copy()
    changed[0, 0] += 1
    assert quantize_calibrated(changed, hessian, None, 4) is not first
    held = len(quantization._rounded)
    del hessian, first, codes, steps
    gc.collect()
    quantize_calibrated(w, x.T @ x, None, 4)  # a new entry clears those whose statistics are gone
    assert len(quantization._rounded) < held


def test_int8_tf1_graph_runs_stock_within_tolerance(real, tmp_path):
    calibration, unseen = tmp_path / "calib.npz", musicnn_feed(4, seed=2)
    np.savez(calibration, x=musicnn_feed(8, seed=1)[MUSICNN_IN])
    stripped = run_json("strip", real["musicnn"], "-o", str(tmp_path / "s") + "/")["output"]
    result = run_json("quantize", real["musicnn"], "-o", str(tmp_path / "q") + "/", "--data", calibration)
    prefix = result["output"]
    assert len(result["passes"]["quantize"]["calibrated_tensors"]) == 10  # every Conv2D / MatMul kernel
    data_file = ".data-00000-of-00001"
    assert os.path.getsize(prefix + data_file) <= 0.30 * os.path.getsize(stripped + data_file)
    dense = tf1_predict(real["musicnn"] + "/.meta", real["musicnn"] + "/", unseen, MUSICNN_OUT)
    int8 = tf1_predict(prefix + ".meta", prefix, unseen, MUSICNN_OUT)
    assert np.abs(int8 - dense).max() <= 0.02


def test_quantize_refuses_what_it_cannot_write(real, small_keras, tmp_path):
    container = tmp_path / "c.h5"
    run_cli("pack", small_keras[1], "-o", container)
    line = run_error("quantize", container, "-o", tmp_path / "q.h5")
    assert "pack --values int8" in line and not (tmp_path / "q.h5").exists()
    assert "4-bit" in run_error("quantize", real["musicnn"], "-o", str(tmp_path / "q4") + "/", "--bits", "4")
    assert "--values int8, int4 or ecq" in run_error("pack", small_keras[1], "-o", tmp_path / "c.h5", "--data",
                                                small_keras[2])


# --- Keras's own int8 format ------------------------------------------------------------------------

def test_keras_int8_format_loads_stock_with_its_dense_layers_quantized(mhc, tmp_path):
    import keras

    calibration, held_out = tmp_path / "calib.npz", tmp_path / "held.npz"
    with np.load(mhc["data"]) as data:
        x, y = data["x"], data["y"]
    np.savez(calibration, x=x[:400])
    np.savez(held_out, x=x[400:], y=y[400:])
    out = tmp_path / "ba-int8.keras"
    result = run_json("quantize", mhc["ba"], "-o", out, "--data", calibration)
    summary = result["quantize"]
    # Dense(64) is GPTQ-rounded; Dense(1) has one output unit (one Keras scale for all its inputs): as Keras
    # rounds it. The LSTM has no Keras int8 form.
    assert len(summary["quantized_layers"]) == 2 and len(summary["calibrated_layers"]) == 1
    assert [n.split("/")[-1] for n in summary["float_layers"]] == ["lstm_cell"] and 0.8 < summary["float_share"] < 0.9
    assert result["output_bytes"] == os.path.getsize(out) < os.path.getsize(mhc["ba"])
    model = keras.models.load_model(out)  # stock, safe_mode
    assert [layer.quantization_mode for layer in model.layers if layer.weights] == [None, "int8", "int8"]
    assert model.get_layer(summary["calibrated_layers"][0])._kernel.dtype == "int8"
    dense = keras.models.load_model(mhc["ba"])
    np.testing.assert_allclose(model.predict(x[400:], verbose=0), dense.predict(x[400:], verbose=0), atol=0.02)
    # The held-out 200 peptides (AUC 0.917 dense) keep their AUC within 0.005.
    held = {r["metric"]: r["value"] for r in run_json("evaluate", out, "--data", held_out, "--metric", "auc")["results"]}
    base = {r["metric"]: r["value"] for r in run_json("evaluate", mhc["ba"], "--data", held_out, "--metric", "auc")["results"]}
    assert abs(held["auc"] - base["auc"]) <= 0.005


def test_keras_int8_refuses_models_without_quantizable_layers(real, tmp_path):
    line = run_error("quantize", real["fer"], "-o", tmp_path / "fer.keras")
    assert "pack --values int8" in line and not (tmp_path / "fer.keras").exists()


# --- sweep and autotune over value widths ---------------------------------------------------------------

@pytest.fixture(scope="module")
def face_parts(faces, tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    x = np.load(faces["data"])["x"]
    parts = {"calibration": str(root / "calibration.npz"), "data": str(root / "data.npz")}
    np.savez(parts["calibration"], x=x[:40])
    np.savez(parts["data"], x=x[40:])
    return parts


def test_sweep_bits_evaluates_what_the_container_restores(real, face_parts, tmp_path):
    result = run_json("sweep", real["fer"], "--data", face_parts["data"], "--methods", "relative", "--deltas", "0,0.5",
                      "--bits", "32,8,4", "--calibration", face_parts["calibration"])
    rows = {(r["values"], r["delta"]): r for r in result["rows"]}
    assert sorted(rows) == sorted((v, d) for v in ("float32", "int8", "int4") for d in (0.0, 0.5))
    assert rows[("int4", 0.0)]["packed_bytes"] < rows[("int8", 0.0)]["packed_bytes"] < rows[("float32", 0.0)][
        "packed_bytes"]
    # The in-memory figure is the figure of the file pack writes with the same options, restored stock.
    container = tmp_path / "fer-int4.h5"
    run_cli("pack", real["fer"], "-o", container, "--values", "int4", "--data", face_parts["calibration"])
    written = {r["metric"]: r["value"] for r in run_json(
        "evaluate", container, "--data", face_parts["data"], "--reference", real["fer"], "--metric", "fidelity")[
        "results"]}
    assert rows[("int4", 0.0)]["value"] == written["fidelity"]


def test_autotune_chooses_the_smallest_container_among_value_widths(real, face_parts, tmp_path):
    out = tmp_path / "tuned.h5"
    result = run_json("autotune", real["fer"], "--data", face_parts["data"], "--max-drop", "0.05", "--target", "bytes",
                      "--pack", "--bits", "16,8,4", "--calibration", face_parts["calibration"], "--methods", "relative",
                      "--max-evals", "30", "-o", out)
    tuned, compare = result["tuned"], result["compare"]
    assert tuned["within_budget"] and tuned["values"] in ("float16", "int8", "int4")
    assert result["output_bytes"] == os.path.getsize(out)
    assert set(compare) == {"dense_bytes", "float16_container_bytes", "int8_container_bytes", "tflite_int8_bytes",
                            "keras_int8_bytes"}
    assert compare["keras_int8_bytes"] is None  # fer has no layer with a Keras int8 form
    # Without training state and with int8 codes, the tuned container is below the TFLite int8 file.
    assert result["output_bytes"] < compare["tflite_int8_bytes"] < compare["dense_bytes"]
    assert "--pack" in run_error("autotune", real["fer"], "--data", face_parts["data"], "--max-drop", "0.05",
                                 "--bits", "8", "-o", tmp_path / "x.hdf5")
