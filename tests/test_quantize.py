"""pack --values int8|int4: per-output-channel integer codes in the container, restored dequantized into
the stock format (lossy, and said so)."""

import json
import lzma
import zlib

import h5py
import numpy as np
import pytest
from helpers import MUSICNN_OUT, musicnn_feed, run_cli, run_error, run_json, stock_tensors, tf1_predict


def reference_quantize(w, levels):
    """From the definition: per last-axis channel, scale = max|w| / levels, codes = round(w / scale)."""
    out = np.empty_like(w)
    for c in range(w.shape[-1]):
        channel = w[..., c]
        scale = np.float32(np.abs(channel).max() / levels) if np.abs(channel).max() > 0 else np.float32(1)
        out[..., c] = np.clip(np.rint(channel / scale), -levels, levels) * scale
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
    for values, most_bits in (("int8", 8.5), ("int4", 4.5)):
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
