"""ecq: entropy-coded uniform quantization. The levels coder round-trips and refuses damage; the steps follow
their definition; a container restores exactly the values the evaluation scored; every output format loads."""

import json
import lzma
import os
import zlib

import h5py
import numpy as np
import pytest
from helpers import run_cli, run_error, run_json, split_labelled, stock_tensors

import wcompress
from wcompress import WcompressWarning
from wcompress.formats.container import levels
from wcompress.formats.container.quantization import (
    calibrated_source, ecq_steps, ecq_unit, ecq_units, quantize_ecq, restored_values)


def _laplace_plane(shape, scale, seed=0):
    return np.rint(np.random.default_rng(seed).laplace(0, scale, shape)).astype(np.int32)


@pytest.mark.parametrize("shape, scale", [((1, 1), 1), ((7, 3), 0.3), ((500, 40), 1.5), ((300, 2), 40),
                                          ((70000, 2), 0.7), ((2000, 64), 0.2)])
def test_levels_round_trip(shape, scale):
    plane = _laplace_plane(shape, scale)
    plane[0, 0] = -(levels.MAX_LEVEL - 1)  # the widest level there is, through the escape list
    assert np.array_equal(levels.decode(levels.encode(plane), *shape), plane)


def test_levels_cost_at_most_their_order0_entropy():
    """Coded with the tensor's own context statistics: within a header of the order-0 bound, and well below
    it where rows are structured (whole rows at zero, as pruned or dead inputs leave them)."""
    plane = _laplace_plane((4000, 32), 0.8)
    assert levels.encode(plane).nbytes * 8 <= levels.order0_bits(plane) * 1.01 + 800
    plane[::3] = 0
    assert levels.encode(plane).nbytes * 8 < levels.order0_bits(plane) * 0.9


def test_damaged_levels_are_an_error_never_other_levels():
    plane = _laplace_plane((300, 24), 1.0, seed=3)
    blob = levels.encode(plane).tobytes()
    rng = np.random.default_rng(0)
    for case in range(300):
        damaged = bytearray(blob)
        if case % 3 == 0:
            damaged = damaged[:rng.integers(0, len(blob))]
        else:
            for at in rng.integers(0, len(blob), size=1 + case % 4):
                damaged[at] ^= 1 << int(rng.integers(0, 8))
        try:
            decoded = levels.decode(np.frombuffer(bytes(damaged), np.uint8), 300, 24)
        except ValueError:
            continue
        # A flip the coder cannot see must still decode to the declared counts; only then is it accepted.
        assert decoded.shape == (300, 24)


def test_steps_follow_their_definition():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, (20, 5)) * np.array([1, 2, 0.5, 3, 0])
    x = rng.normal(0, 1, (200, 20)) * np.linspace(0.1, 2, 20)
    h = x.T @ x / len(x)
    for qp in (-8, 0, 5):
        rms = np.sqrt((w ** 2).mean(axis=0))
        expected = np.where(rms > 0, 2 ** (qp / 4) * rms, 1.0)
        assert np.allclose(ecq_steps(w, qp), expected, rtol=2 ** (1 / 16) - 1)  # rounded to the grid 2^(k/8)
        energy = np.array([w[:, c] @ h @ w[:, c] for c in range(5)]) / np.trace(h)
        expected = np.where(energy > 0, 2 ** (qp / 4) * np.sqrt(energy), 1.0)
        assert np.allclose(ecq_steps(w, qp, h), expected, rtol=2 ** (1 / 16) - 1)
        unit = np.array([0.5, 1, 2, 4, 8])  # measured sensitivity: the step goes halfway to it, on a log scale
        expected = np.where(energy > 0, 2 ** (qp / 4) * np.sqrt(np.sqrt(energy) * unit), 1.0)
        assert np.allclose(ecq_steps(w, qp, h, unit), expected, rtol=2 ** (1 / 16) - 1)
        steps = ecq_steps(w, qp, h, unit)
        assert np.array_equal(steps, (2.0 ** (np.rint(8 * np.log2(steps)) / 8)).astype(np.float32))  # on it


def test_units_follow_their_definition():
    """u_c = sqrt(variance / (N F_c)), F_c the mean sensitivity of channel c's weights (a depthwise kernel's
    channels on axis 2), floored at 1e-4 x its tensor's mean; a tensor the output ignores gets none. N counts
    kernel weights; a vector gets one unit from its mean sensitivity."""
    rng = np.random.default_rng(4)
    dense, depthwise, bias = rng.random((6, 4)), rng.random((3, 3, 5, 1)), rng.random(4)
    dense[:, 1] = 0
    units = ecq_units({"d": dense, "dw": depthwise, "bias": bias, "dead": np.zeros((2, 2)), "off": np.zeros(3)}, 7.0)
    total = dense.size + depthwise.size + 4
    channel = dense.mean(axis=0)
    channel[1] = 1e-4 * channel.mean()
    assert set(units) == {"d", "dw", "bias"}
    assert np.allclose(units["bias"], [np.sqrt(7.0 / (total * bias.mean()))])
    assert np.allclose(units["d"], np.sqrt(7.0 / (total * channel)))
    assert np.allclose(units["dw"], np.sqrt(7.0 / (total * depthwise.mean(axis=(0, 1, 3)))))
    assert ecq_units({"d": dense}, 0.0) == {}


def _probes(rows, outputs, batch=16):
    """The standard normal probe of each batch, as the predictors draw it (seeded by the batch's index)."""
    import tensorflow as tf

    return [tf.random.stateless_normal((min(batch, rows - s), outputs), seed=(i, 0)).numpy().astype(np.float64)
            for i, s in enumerate(range(0, rows, batch))]


def test_keras_output_sensitivity_is_the_probed_gradient_squared(tiny):
    """The linear head's gradient is h' v (h its input): its Fisher is the mean of (h' v)^2 over batches."""
    import keras

    from wcompress.runtime.predictors import load_predictor

    predictor = load_predictor(tiny["keras"])
    try:
        fisher, variance = predictor.output_fisher({"x": tiny["x"]})
        model = predictor.model
        head = next(i for i, v in enumerate(model.weights) if v is model.get_layer("head").kernel)
        hidden = keras.Model(model.inputs, model.get_layer("hidden2").output).predict(tiny["x"], verbose=0)
        outputs = model.predict(tiny["x"], verbose=0).astype(np.float64)
    finally:
        predictor.close()
    hidden = hidden.astype(np.float64)
    expected = sum((hidden[16 * i:16 * i + 16].T @ v) ** 2 for i, v in enumerate(_probes(64, 3))) / 64
    assert np.allclose(fisher[head], expected, rtol=1e-4)
    assert variance == pytest.approx(outputs.var(axis=0).sum(), rel=1e-5)
    assert {len(model.weights[i].shape) for i in fisher} == {1, 2}  # kernels, biases
    bias = next(i for i, v in enumerate(model.weights) if v is model.get_layer("head").bias)
    assert np.allclose(fisher[bias], sum(v.sum(axis=0) ** 2 for v in _probes(64, 3)) / 64, rtol=1e-4)


def test_tf1_output_sensitivity_is_the_probed_gradient_squared(tiny):
    """sigmoid(relu(x w1 + b1) w2 + b2): d(v . out)/d w2 = a' (v s (1 - s)), a = relu(x w1 + b1)."""
    from wcompress.formats import open_model
    from wcompress.runtime.predictors import load_predictor

    store = open_model(tiny["tf1"])
    w1, b1, w2, b2 = (store.load(n).astype(np.float64) for n in ("fc1/kernel", "fc1/bias", "fc2/kernel", "fc2/bias"))
    x = np.random.default_rng(5).random((40, 10)).astype(np.float32)
    predictor = load_predictor(tiny["tf1"])
    try:
        fisher, variance = predictor.output_fisher({"x": x})
    finally:
        predictor.close()
    a = np.maximum(x @ w1 + b1, 0)
    s = 1 / (1 + np.exp(-(a @ w2 + b2)))
    expected = sum((a[16 * i:16 * i + 16].T @ (v * s[16 * i:16 * i + 16] * (1 - s[16 * i:16 * i + 16]))) ** 2
                   for i, v in enumerate(_probes(40, 4))) / 40
    assert sorted(fisher) == ["fc1/kernel", "fc2/kernel"]
    assert np.allclose(fisher["fc2/kernel"], expected, rtol=1e-4)
    assert variance == pytest.approx(s.var(axis=0).sum(), rel=1e-4)


def test_rounded_levels_and_pruned_zeros():
    w = np.random.default_rng(2).normal(0, 1, (3, 3, 4, 6)).astype(np.float32)
    w[0] = 0
    codes, steps = quantize_ecq(w, 2)
    assert codes.dtype == np.int32 and steps.shape == (6,)
    assert np.array_equal(codes, np.rint(w / steps).astype(np.int32)) and not codes[0].any()


@pytest.fixture(scope="module")
def packed(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("ecq")
    out = {}
    for kind in ("keras", "tf1"):
        out[kind] = root / f"{kind}.h5"
        run_cli("pack", tiny[kind], "--values", "ecq", "--qp", "0", "-o", out[kind])
    return out


def test_restore_gives_exactly_the_values_the_evaluation_used(tiny, packed, tmp_path):
    from wcompress.formats import open_model

    source, container = open_model(tiny["keras"]), open_model(str(packed["keras"]))
    assert container.version == 9
    restored = stock_tensors(run_json("restore", packed["keras"], "-o", tmp_path / "r.keras", "--json")["output"])
    for info in source.tensors:
        expected = restored_values(source.load(info.name), "ecq:0")
        assert np.array_equal(container.load(info.name), expected)
    kernels = [info for info in source.tensors if info.role == "kernel"]
    assert kernels and all(container.entries[k.name]["encoding"] == "ecq" for k in kernels)
    stored = sorted(restored.values(), key=lambda a: (a.shape, a.sum()))
    wanted = sorted((restored_values(source.load(i.name), "ecq:0") for i in source.tensors),
                    key=lambda a: (a.shape, a.sum()))
    assert all(np.array_equal(a, b) for a, b in zip(stored, wanted))


def test_calibrated_ecq_restores_what_gptq_chose(tiny, tmp_path):
    """With --data the levels are GPTQ-rounded on ecq's grid (each kernel calibrated with the ones before it
    coded), its steps moved by the measured sensitivity: restore gives those values, bit for bit."""
    from wcompress.formats import open_model
    from wcompress.runtime.capture import input_hessians

    data = tmp_path / "calib.npz"
    np.savez(data, x=tiny["x"][:32])
    container = tmp_path / "c.h5"
    run_cli("pack", tiny["keras"], "--values", "ecq", "--qp", "0", "--data", data, "-o", container)
    calibration = input_hessians(tiny["keras"], str(data), sensitivity=True, values="ecq:0")
    source, stored = open_model(tiny["keras"]), open_model(str(container))
    calibrated = [n for n, e in stored.entries.items() if (e.get("quantized") or {}).get("calibrated")]
    assert calibrated and set(calibrated) <= set(calibration.units)
    vectors = [n for n, e in stored.entries.items() if e["encoding"] == "ecq" and len(e["shape"]) == 1]
    assert vectors and all(stored.entries[n]["quantized"]["axis"] is None for n in vectors)  # biases: one step
    for info in source.tensors:  # vectors as fitted to the dense model's outputs (test_fitting.py)
        array = calibrated_source(calibration, info.name, source.load(info.name), "ecq:0")
        assert np.array_equal(stored.load(info.name), restored_values(
            array, "ecq:0", calibration.get(info.name), ecq_unit(calibration, info.name)))
    for name in calibrated:  # the measured sensitivity moved the steps
        assert not np.array_equal(stored.load(name), restored_values(source.load(name), "ecq:0", calibration[name]))


@pytest.mark.parametrize("suffix", [".keras", ".h5", ".weights.h5"])
def test_every_output_loads_in_stock_keras(tiny, packed, tmp_path, suffix):
    import keras

    dest = str(tmp_path / "out") + suffix
    run_cli("restore", packed["keras"], "-o", dest)
    if suffix == ".weights.h5":
        model = keras.models.load_model(tiny["keras"])
        model.load_weights(dest)
    else:
        model = keras.models.load_model(dest)
    assert model.predict(tiny["x"][:4], verbose=0).shape == (4, 3)


def test_tf1_checkpoint_restores_for_stock_tensorflow(tiny, packed, tmp_path):
    from wcompress.formats import open_model

    dest = str(tmp_path / "tf1") + "/"
    written = run_json("restore", packed["tf1"], "-o", dest, "--json")["output"]
    tensors = stock_tensors(written)
    source = open_model(tiny["tf1"])
    for info in source.tensors:
        assert np.array_equal(tensors[info.name], restored_values(source.load(info.name), "ecq:0"))


def test_report_shows_bits_per_weight(packed):
    result = run_json("report", packed["tf1"], "--json")
    assert result["container_version"] == 9
    rows = [r for r in result["tensors"] if r["encoding"] == "ecq"]
    assert rows and all(r["value_dtype"] == "ecq:0" and 0 < r["bits_per_weight"] < 8 for r in rows)
    assert all(r["bits_per_weight"] == 8 * r["stored_bytes"] / r["elements"] for r in rows)


def test_smaller_qp_steps_make_larger_files_and_closer_values(tiny, tmp_path):
    sizes, errors = [], []
    from wcompress.formats import open_model

    source = open_model(tiny["tf1"])
    for qp in (-8, 0, 8):
        out = tmp_path / f"q{qp}.h5"
        sizes.append(run_json("pack", tiny["tf1"], "--values", "ecq", "--qp", str(qp), "-o", out, "--json")
                     ["output_bytes"])
        stored = open_model(str(out))
        errors.append(sum(float(np.abs(stored.load(i.name) - source.load(i.name)).sum()) for i in source.tensors
                          if i.role == "kernel"))
    assert sizes[0] > sizes[1] > sizes[2] and errors[0] < errors[1] < errors[2]


@pytest.mark.parametrize("args, message", [
    (("--values", "ecq"), "--values ecq needs --qp"),
    (("--values", "int8", "--qp", "2"), "--qp sets the step of --values ecq"),
    (("--values", "ecq", "--qp", "99"), "--qp takes -48..48"),
])
def test_option_errors(tiny, tmp_path, args, message):
    line = run_error("pack", tiny["keras"], "-o", tmp_path / "c.h5", *args)
    assert message in line and not (tmp_path / "c.h5").exists()


def _edit(container, edit, blob=None):
    """A crafted container: the index (and optionally one ecq levels stream) edited, checksums made to match."""
    with h5py.File(container, "r+") as h5:
        index = json.loads(lzma.decompress(h5["index"][()].tobytes()))
        edit(index)
        if blob is not None:
            entry = next(e for e in index["tensors"] if e["encoding"] == "ecq" and "dataset" in e["streams"]["levels"])
            name = entry["streams"]["levels"]["dataset"]
            data = blob(h5["streams"][name][()])
            del h5["streams"][name]
            h5["streams"][name] = data
            index["checksums"][f"streams/{name}"] = zlib.crc32(data.tobytes())
            entry["streams"]["levels"]["bytes"] = entry["entries"] = int(data.size)
        packed = np.frombuffer(lzma.compress(json.dumps(index).encode()), dtype=np.uint8)
        del h5["index"]
        h5["index"] = packed
        h5.attrs["index_crc32"] = zlib.crc32(packed.tobytes())


def _first_ecq(index):
    return next(e for e in index["tensors"] if e["encoding"] == "ecq")


def _replace_scales(container, scales, version=None):
    """The first ecq entry's `scales` stream replaced by `scales`, raw in a dataset of its own (and the file's
    version set), checksums made to match."""
    with h5py.File(container, "r+") as h5:
        index = json.loads(lzma.decompress(h5["index"][()].tobytes()))
        h5["streams"]["crafted_scales"] = scales.view(np.uint8)
        index["checksums"]["streams/crafted_scales"] = zlib.crc32(scales.tobytes())
        _first_ecq(index)["streams"]["scales"] = {"dataset": "crafted_scales", "coder": "raw", "bytes": scales.nbytes,
                                                  "count": scales.size, "dtype": str(scales.dtype)}
        if version is not None:
            index["attributes"]["version"] = version
            h5.attrs["version"] = version
        packed = np.frombuffer(lzma.compress(json.dumps(index).encode()), dtype=np.uint8)
        del h5["index"]
        h5["index"] = packed
        h5.attrs["index_crc32"] = zlib.crc32(packed.tobytes())


def _one_kernel_container(tmp_path):
    from wcompress.formats.bundle import write_bundle

    prefix = str(tmp_path / "ck" / "model.ckpt")
    os.makedirs(os.path.dirname(prefix))
    w = np.random.default_rng(0).normal(0, 1, (600, 600)).astype(np.float32)
    write_bundle(prefix, [("big/kernel", w)])
    container = tmp_path / "c.h5"
    run_cli("pack", prefix, "--values", "ecq", "--qp", "0", "-o", container)
    return container


def test_steps_are_stored_as_exponents_and_version_6_float_steps_still_read(tmp_path):
    """Version 7 stores each step 2^(k/8) as its int16 k; a version-6 file's float32 steps give the same values."""
    from wcompress.formats import open_model

    container = _one_kernel_container(tmp_path)
    with h5py.File(container, "r") as h5:
        assert h5.attrs["version"] == 9
        index = json.loads(lzma.decompress(h5["index"][()].tobytes()))
    assert _first_ecq(index)["streams"]["scales"]["dtype"] == "int16"
    store = open_model(str(container))
    expected = store.load("big/kernel")
    levels_ = store.load_stored("big/kernel").astype(np.float64)
    rows = np.abs(levels_).argmax(axis=0)
    steps = expected[rows, np.arange(600)] / levels_[rows, np.arange(600)]
    k = np.rint(8 * np.log2(steps))
    assert np.array_equal(steps.astype(np.float32), (2.0 ** (k / 8)).astype(np.float32))  # every step on the grid
    old = tmp_path / "v6.h5"
    old.write_bytes(container.read_bytes())
    _replace_scales(old, (2.0 ** (k / 8)).astype(np.float32), version=6)
    assert np.array_equal(open_model(str(old)).load("big/kernel"), expected)


def test_idle_channels_take_the_median_step_and_steps_code_as_levels(tmp_path):
    """A channel quantized to all zeros restores to zeros at any step: it is stored with the median exponent,
    and exponents close together code as a levels blob (version 9) when that is the smallest coding."""
    from wcompress.formats import open_model
    from wcompress.formats.bundle import write_bundle
    from wcompress.formats.container import coders
    from wcompress.formats.container.reader import _place_pooled_streams

    prefix = str(tmp_path / "ck" / "model.ckpt")
    os.makedirs(os.path.dirname(prefix))
    rng = np.random.default_rng(3)
    w = (rng.normal(0, 1, (300, 400)) * rng.uniform(0.7, 1.4, 400)).astype(np.float32)
    w[:, :40] = 0  # pruned channels: all levels zero
    write_bundle(prefix, [("big/kernel", w)])
    container = tmp_path / "c.h5"
    run_cli("pack", prefix, "--values", "ecq", "--qp", "4", "-o", container)
    store = open_model(str(container))
    levels_, steps = store._decode("big/kernel", stored=True)
    idle = ~np.any(levels_, axis=0)
    assert idle[:40].all() and not idle[40:].any()
    k = np.rint(8 * np.log2(steps.astype(np.float64)))
    assert (k[idle] == np.round(np.median(k[~idle]))).all()
    assert np.array_equal(store.load("big/kernel")[:, idle], np.zeros((300, 40), np.float32))
    ref = _first_ecq(json.loads(lzma.decompress(h5py.File(container, "r")["index"][()].tobytes())))["streams"]["scales"]
    exponents = k.astype(np.int16)
    assert ref["coder"] == "levels"
    assert ref["bytes"] == min(coders.encode(exponents, c).nbytes for c in ("raw", "zstd", "pcodec", "levels"))
    older = tmp_path / "v8.h5"  # version 8 had no levels coder: such a stream there is crafted
    older.write_bytes(container.read_bytes())
    with h5py.File(older, "r+") as h5:
        index = json.loads(lzma.decompress(h5["index"][()].tobytes()))
        index["attributes"]["version"] = h5.attrs["version"] = 8
        _place_pooled_streams(index["tensors"])  # version 8 declared each pooled stream's offset
        packed_index = np.frombuffer(lzma.compress(json.dumps(index).encode()), dtype=np.uint8)
        del h5["index"]
        h5["index"] = packed_index
        h5.attrs["index_crc32"] = zlib.crc32(packed_index.tobytes())
    assert "unknown coder 'levels'" in run_error("restore", older, "-o", str(tmp_path / "r") + "/")


def test_an_out_of_range_step_exponent_is_refused(tmp_path):
    container = _one_kernel_container(tmp_path)
    _replace_scales(container, np.full(600, 2000, np.int16))
    line = run_error("restore", container, "-o", str(tmp_path / "r") + "/")
    assert "step exponent is out of range" in line and str(container) in line
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.parametrize("edit, blob, message", [
    (lambda i: _first_ecq(i)["quantized"].update(ecq=400), None, "malformed quantization"),
    (lambda i: _first_ecq(i).update(value_dtype="int8"), None, "malformed quantization"),
    (lambda i: _first_ecq(i).pop("quantized"), None, "come together"),
    (lambda i: _first_ecq(i)["quantized"].update(axis=5), None, "malformed quantization"),
    (lambda i: None, lambda d: d[: len(d) // 2], "ecq"),
    (lambda i: None, lambda d: np.concatenate([d[:1], np.frombuffer(bytes([250, 255, 255, 255, 15]), np.uint8),
                                               d[1:]]), "ecq"),
])
def test_crafted_ecq_entries_are_refused(tmp_path, edit, blob, message):
    container = _one_kernel_container(tmp_path)
    _edit(container, edit, blob)
    line = run_error("restore", container, "-o", str(tmp_path / "r") + "/")
    assert message in line and str(container) in line
    assert not os.path.exists(tmp_path / "r")


def test_autotune_searches_the_quality_parameter_and_holds_out(mhc, tmp_path):
    """--bits ecq: the coarsest QP that holds on the tuning part, refined per layer; judged on examples the
    search never saw, and that figure is what the written container gives when restored and evaluated."""
    tune, check = split_labelled(mhc["data"], 400, tmp_path)
    out = tmp_path / "small.h5"
    result = run_json("autotune", mhc["ba"], "--data", tune, "--validation", check, "--metric", "auc",
                      "--max-drop", "0.05", "--target", "bytes", "--pack", "--bits", "ecq", "--max-layers", "0",
                      "-o", out)
    assert result["tuned"]["within_budget"] and result["output_bytes"] == os.path.getsize(out)
    assert result["tuned"]["values"].startswith("ecq:")
    restored = run_json("restore", out, "-o", tmp_path / "r.keras")
    again = run_json("evaluate", restored["output"], "--data", check, "--metric", "auc")["results"][0]["value"]
    assert again == pytest.approx(result["tuned"]["held_out_value"])
    int8 = run_json("pack", mhc["ba"], "--values", "int8", "-o", tmp_path / "int8.h5")["output_bytes"]
    assert result["output_bytes"] < int8


def test_sparsify_pack_ecq_keeps_the_zeros(tiny, tmp_path):
    """Pruned weights stay zero through ecq (a zero rounds to level 0, GPTQ or not)."""
    from wcompress.formats import open_model

    sparse = tmp_path / "sparse.keras"
    run_cli("sparsify", tiny["keras"], "--method", "relative", "--delta", "0.5", "--min-size", "0", "-o", sparse)
    container = tmp_path / "c.h5"
    run_cli("sparsify", tiny["keras"], "--method", "relative", "--delta", "0.5", "--min-size", "0", "--pack",
            "--values", "ecq", "--qp", "0", "-o", container)
    before, after = open_model(str(sparse)), open_model(str(container))
    for info in before.tensors:
        if info.role == "kernel":
            zeros = before.load(info.name) == 0
            assert zeros.any() and not after.load(info.name)[zeros].any()


def test_tensorflow_imported_with_onednn_on_calibrates_in_a_child_the_same_bytes(tiny, tmp_path):
    """oneDNN's convolution gradients crash TensorFlow, and a script that imported it first (oneDNN on, as
    any in-memory model has it) cannot turn it off: the calibration runs in a child without it, so the
    script writes the same bytes as a process that never had it, with no warning."""
    import hashlib
    import subprocess
    import sys

    data = tmp_path / "calib.npz"
    np.savez(data, x=tiny["x"][:32])
    wcompress.pack(tiny["keras"], output=str(tmp_path / "here.h5"), values="ecq", qp=0, data=str(data))
    script = ("import warnings, tensorflow, wcompress\n"
              "from wcompress.formats.tfenv import onednn_enabled\n"
              "with warnings.catch_warnings(record=True) as seen:\n"
              "    warnings.simplefilter('always')\n"
              f"    wcompress.pack({tiny['keras']!r}, output={str(tmp_path / 'c.h5')!r}, values='ecq', qp=0, "
              f"data={str(data)!r})\n"
              "print(onednn_enabled(), [str(w.message) for w in seen if 'oneDNN' in str(w.message)])\n")
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "True []"
    digest = [hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in ("here.h5", "c.h5")]
    assert digest[0] == digest[1]


def test_onednn_on_and_no_child_possible_skips_the_sensitivity_with_a_warning(tiny, tmp_path, monkeypatch):
    """Where the calibration cannot cross to a child (custom objects are classes, not data), the steps come
    from H alone and a warning says how to get the rest."""
    from wcompress.runtime import capture

    monkeypatch.setattr(capture, "onednn_enabled", lambda: True)
    with pytest.warns(WcompressWarning, match="TF_ENABLE_ONEDNN_OPTS=0"):
        calibration = capture.input_hessians(tiny["keras"], {"x": tiny["x"][:32]}, sensitivity=True,
                                             values="ecq:0", custom_objects={"Unused": object})
    assert calibration and not calibration.units and not calibration.vectors
