"""pack / restore / report: bit-exact round trips, stock loading, measured sizes, validated reads."""

import json
import os
import shutil
import lzma
import zlib

import h5py
import numpy as np
import pytest
from helpers import (
    MUSICNN_OUT,
    as_version_1,
    assert_same_tensors,
    musicnn_feed,
    run_cli,
    run_error,
    run_json,
    savedmodel_predict,
    stock_tensors,
    tf1_predict,
)

from wcompress.formats.bundle import write_bundle


def _dest(src_kind, tmp_path, name):
    return str(tmp_path / name) + ("/" if src_kind.endswith("checkpoint") else "")


@pytest.fixture(scope="module")
def sparsified(real, tiny, tmp_path_factory):
    """Each fixture sparsified (relative 0.5, dense zeros), packed, and restored."""
    root = tmp_path_factory.mktemp("packed")
    out = {}
    for key in ("musicnn", "fer", "basic-pitch", "mhcnuggets", "keras", "weights_h5", "tf2", "tf1"):
        src = real[key] if key in real else tiny[key]
        kind = run_json("profile", src)["format"]
        suffix = "" if kind.endswith("checkpoint") or kind == "savedmodel" else os.path.basename(src)
        sparse = run_json("sparsify", src, "--method", "relative", "--delta", "0.5", "-o",
                          _dest(kind, root, f"{key}-sparse{suffix}"))["output"]
        container = str(root / f"{key}.h5")
        run_cli("pack", sparse, "-o", container)
        restored = run_json("restore", container, "-o", _dest(kind, root, f"{key}-restored{suffix}"))["output"]
        out[key] = (sparse, container, restored, kind)
    return out


@pytest.mark.parametrize("key", ["musicnn", "fer", "basic-pitch", "mhcnuggets", "keras", "weights_h5", "tf2", "tf1"])
def test_pack_restore_is_bit_exact(sparsified, key):
    sparse, container, restored, kind = sparsified[key]
    assert_same_tensors(stock_tensors(sparse), stock_tensors(restored))
    assert run_json("profile", restored)["format"] == kind
    # Half the weights are zero: the container beats the dense file, small models included.
    assert os.path.getsize(container) < run_json("profile", sparse)["file_bytes"]


def test_restored_musicnn_predicts_like_sparsified(sparsified):
    sparse, _, restored, _ = sparsified["musicnn"]
    feed = musicnn_feed()
    assert np.array_equal(tf1_predict(sparse + ".meta", sparse, feed, MUSICNN_OUT),
                          tf1_predict(restored + ".meta", restored, feed, MUSICNN_OUT))


def test_restored_keras_models_predict_like_sparsified(sparsified, tiny):
    import keras

    x = np.random.RandomState(1).uniform(-1, 1, (3, 64, 64, 1)).astype("float32")
    for key, data in (("fer", x), ("keras", tiny["x"])):
        sparse, _, restored, _ = sparsified[key]
        a = keras.models.load_model(sparse, compile=False).predict(data, verbose=0)
        b = keras.models.load_model(restored, compile=False).predict(data, verbose=0)
        assert np.array_equal(a, b)


def test_restored_savedmodel_and_tf2_work_in_stock_tf(sparsified, tiny):
    import tensorflow as tf
    from conftest import build_tiny_keras

    sparse, _, restored, _ = sparsified["basic-pitch"]
    x = np.random.RandomState(0).rand(1, 43844, 1).astype("float32")
    a, b = savedmodel_predict(sparse, x), savedmodel_predict(restored, x)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    sparse, _, restored, _ = sparsified["tf2"]
    m1, m2 = build_tiny_keras(), build_tiny_keras()
    tf.train.Checkpoint(model=m1).read(sparse).assert_existing_objects_matched()
    tf.train.Checkpoint(model=m2).read(restored).assert_existing_objects_matched()
    assert np.array_equal(m1.predict(tiny["x"], verbose=0), m2.predict(tiny["x"], verbose=0))


def test_sparsify_pack_directly(real, tmp_path):
    out = tmp_path / "fer.h5"
    run_cli("sparsify", real["fer"], "--method", "relative", "--delta", "0.5", "--pack", "-o", out)
    restored = run_json("restore", out, "-o", tmp_path / "fer-restored.hdf5")["output"]
    dense = run_json("sparsify", real["fer"], "--method", "relative", "--delta", "0.5", "-o", tmp_path / "d.hdf5")
    assert_same_tensors(stock_tensors(dense["output"]), stock_tensors(restored))


@pytest.fixture(scope="module")
def tensor_set(tmp_path_factory):
    """Checkpoints of four 512x1024 float32 matrices at 50%, 75% and 90% sparsity (random positions)."""
    root = tmp_path_factory.mktemp("sets")
    rng = np.random.default_rng(7)
    out = {}
    for sparsity in (0.5, 0.75, 0.9):
        prefix = str(root / f"s{int(sparsity * 100)}" / "model.ckpt")
        os.makedirs(os.path.dirname(prefix))

        def items(s=sparsity):
            for i in range(4):
                w = rng.standard_normal((512, 1024), dtype=np.float32)
                w[rng.random((512, 1024)) < s] = 0
                yield f"layer{i}/kernel", w

        write_bundle(prefix, items())
        out[sparsity] = prefix
    return out


@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9])
def test_container_size_against_information_bound(tensor_set, tmp_path, sparsity):
    container = tmp_path / "c.h5"
    run_cli("pack", tensor_set[sparsity], "-o", container, "--values", "float16")
    report = run_json("report", container)
    totals = report["totals"]
    assert totals["file_bytes"] == os.path.getsize(container)
    assert totals["file_over_bound"] <= 1.25
    dense = 4 * 512 * 1024 * 4
    assert totals["dense_float32_bytes"] == dense
    if sparsity == 0.75:
        assert os.path.getsize(container) <= 0.16 * dense
    assert totals["gzip_dense_bytes"] > os.path.getsize(container)  # beats gzip of the dense file
    assert {r["encoding"] for r in report["tensors"]} == {"delta8" if sparsity == 0.9 else "bitmask"}


def test_codecs_round_trip(tensor_set, tmp_path):
    for codec in ("gzip", "lzf"):
        container = tmp_path / f"{codec}.h5"
        run_cli("pack", tensor_set[0.9], "-o", container, "--codec", codec)
        restored = run_json("restore", container, "-o", str(tmp_path / codec) + "/")["output"]
        assert_same_tensors(stock_tensors(tensor_set[0.9]), stock_tensors(restored))


def test_report_on_plain_model_and_against(real, tmp_path):
    container = tmp_path / "m.h5"
    run_cli("sparsify", real["musicnn"], "--method", "relative", "--delta", "0.75", "--pack", "--values",
            "float16", "-o", container)
    report = run_json("report", container, "--against", real["musicnn"])
    assert report["totals"]["against_bytes"] == sum(
        os.path.getsize(os.path.join(real["musicnn"], f)) for f in (".index", ".data-00000-of-00001", ".meta",
                                                                   "checkpoint"))
    text = run_cli("report", container).stdout
    assert "file/bound" in text and "gzip -6" in text
    plain = run_json("report", real["fer"])
    assert plain["kind"] == "model" and plain["totals"]["sparsity"] < 0.01


def _coo_container(tmp_path):
    prefix = str(tmp_path / "ck" / "model.ckpt")
    os.makedirs(os.path.dirname(prefix))
    w = np.zeros((1000, 1000), dtype=np.float32)
    w[[3, 500, 999], [7, 8, 999]] = [1.5, -2.0, 3.0]
    write_bundle(prefix, [("big/kernel", w), ("big/bias", np.ones(1000, dtype=np.float32))])
    container = tmp_path / "c.h5"
    run_cli("pack", prefix, "-o", container)
    return container


def test_crafted_index_out_of_range(tmp_path):
    container = _coo_container(tmp_path)
    with h5py.File(container, "r+") as h5:
        index = json.loads(lzma.decompress(h5["index"][()].tobytes()))
        (kernel,) = [t for t in index["tensors"] if t["name"] == "big/kernel"]
        assert kernel["encoding"] == "coo"
        ref = kernel["streams"]["index"]
        assert ref["dtype"] == "uint32"
        pool = h5["streams"][ref["pool"]]
        pool[ref["offset"]:ref["offset"] + 4] = np.array([10**9], dtype=np.uint32).view(np.uint8)
    line = run_error("restore", container, "-o", str(tmp_path / "r") + "/")
    assert "checksum mismatch in streams/pool0" in line and str(container) in line
    with h5py.File(container, "r+") as h5:  # a crafted file carries matching checksums
        index["checksums"]["streams/pool0"] = zlib.crc32(h5["streams/pool0"][()].tobytes())
        _replace_index(h5, index)
    line = run_error("restore", container, "-o", str(tmp_path / "r") + "/")
    assert "out of range" in line and str(container) in line
    assert not os.path.exists(tmp_path / "r")


def _replace_index(h5, index):
    packed = np.frombuffer(lzma.compress(json.dumps(index).encode()), dtype=np.uint8)
    del h5["index"]
    h5["index"] = packed
    h5.attrs["index_crc32"] = zlib.crc32(packed.tobytes())


def test_crafted_huge_shape_refused_before_allocating(tmp_path):
    container = _coo_container(tmp_path)
    with h5py.File(container, "r+") as h5:
        index = json.loads(lzma.decompress(h5["index"][()].tobytes()))
        index["tensors"][-1]["shape"] = [10**9, 10**9]
        _replace_index(h5, index)
    line = run_error("report", container)
    assert "would decode to 4,000,000,000,000,000,000 bytes" in line


def test_container_is_not_a_pass_target(tmp_path):
    container = _coo_container(tmp_path)
    assert "restore` it first" in run_error("strip", container, "-o", tmp_path / "x.h5")
    assert run_json("profile", container)["format"] == "wcompress-container"


def test_truncated_container(tmp_path):
    container = _coo_container(tmp_path)
    data = container.read_bytes()
    container.write_bytes(data[: len(data) * 2 // 3])
    line = run_error("restore", container, "-o", str(tmp_path / "r") + "/")
    assert str(container) in line


def _edit_index(container, edit):
    """Rewrite a container's index as a crafted file would, checksums made to match."""
    with h5py.File(container, "r+") as h5:
        index = json.loads(lzma.decompress(h5["index"][()].tobytes()))
        edit(h5, index)
        _replace_index(h5, index)


def test_source_name_is_data_not_a_path(tmp_path):
    container = _coo_container(tmp_path)
    for hostile in ("../../escaped", "/tmp/absolute-escape", ".."):
        def rename(h5, index):  # a crafted file: the attribute and its checksummed copy agree
            h5.attrs["source_name"] = index["attributes"]["source_name"] = hostile

        _edit_index(container, rename)
        out = tmp_path / "out"
        shutil.rmtree(out, ignore_errors=True)
        written = run_json("restore", container, "-o", str(out) + "/")["output"]
        assert os.path.dirname(written) == str(out)
        assert not os.path.exists(tmp_path.parent / "escaped.index") and not os.path.exists("/tmp/absolute-escape.index")
    before = sorted(os.listdir(tmp_path))
    run_cli("report", container)  # measures gzip through a private restore: writes nothing here
    assert sorted(os.listdir(tmp_path)) == before


def test_every_byte_of_streams_is_checked(tmp_path):
    """Flip each byte of the stored streams in turn: every flip is an error, never different tensors."""
    container = _coo_container(tmp_path)
    pristine = container.read_bytes()
    with h5py.File(container, "r") as h5:
        pool = h5["streams/pool0"][()].tobytes()
    offset, size = pristine.find(pool), len(pool)  # small: stored compact, in its object header
    assert offset > 0 and pristine.count(pool) == 1
    for at in range(offset, offset + size, max(1, size // 40)):
        damaged = bytearray(pristine)
        damaged[at] ^= 0x40
        container.write_bytes(bytes(damaged))
        # ours, or HDF5's own over the object header that holds a compact pool
        line = run_error("restore", container, "-o", str(tmp_path / "r") + "/")
        assert "checksum mismatch" in line or "incorrect metadata checksum" in line, line
        assert not os.path.exists(tmp_path / "r")


@pytest.mark.parametrize("crafted, message", [
    (lambda h5, index: index["tensors"].append(dict(index["tensors"][0])), "listed twice"),
    (lambda h5, index: index["tensors"][0].update(name=""), "without a tensor name"),
    (lambda h5, index: index["tensors"][-1]["streams"]["values"].update(dtype="int32"), "has dtype int32"),
    (lambda h5, index: index["tensors"][-1]["streams"]["index"].update(dtype="int32"), "has dtype int32"),
    (lambda h5, index: index["checksums"].clear(), "no checksum recorded"),
])
def test_crafted_indexes_are_refused(tmp_path, crafted, message):
    container = _coo_container(tmp_path)
    _edit_index(container, crafted)
    line = run_error("restore", container, "-o", str(tmp_path / "r") + "/")
    assert message in line and str(container) in line
    assert not os.path.exists(tmp_path / "r")


def test_repeated_coo_positions_are_refused(tmp_path):
    container = _coo_container(tmp_path)

    def repeat_first_position(h5, index):
        (kernel,) = [t for t in index["tensors"] if t["name"] == "big/kernel"]
        ref = kernel["streams"]["index"]
        pool = h5["streams"][ref["pool"]]
        first = pool[ref["offset"]:ref["offset"] + 4]
        pool[ref["offset"] + 4:ref["offset"] + 8] = first
        index["checksums"]["streams/pool0"] = zlib.crc32(pool[()].tobytes())

    _edit_index(container, repeat_first_position)
    assert "not strictly increasing" in run_error("restore", container, "-o", str(tmp_path / "r") + "/")


def test_metadata_bomb_is_refused(tmp_path):
    container = _coo_container(tmp_path)
    bomb = np.frombuffer(lzma.compress(b"\0" * (512 * 2**20)), dtype=np.uint8)  # ~75 KB that inflate to 512 MB
    with h5py.File(container, "r+") as h5:
        del h5["index"]
        h5["index"] = bomb
        h5.attrs["index_crc32"] = zlib.crc32(bomb.tobytes())
    assert "inflates beyond" in run_error("profile", container)


def test_version_1_containers_still_restore(tmp_path):
    """Version 1 had no checksums: a file written that way (checksums removed) restores bit-exact."""
    container = _coo_container(tmp_path)
    as_version_1(container)
    result = run_json("restore", container, "-o", str(tmp_path / "r") + "/")
    assert_same_tensors(stock_tensors(str(tmp_path / "ck" / "model.ckpt")), stock_tensors(result["output"]))
    warning = f"{container}: container version 1 carries no checksums: damage to it cannot be detected"
    assert result["warnings"] == [warning]
    assert run_cli("restore", container, "-o", str(tmp_path / "r2") + "/").stderr == f"wcompress: warning: {warning}\n"
    assert run_json("report", container)["container_version"] == 1


def test_every_lossy_width_warns_on_restore(real, tmp_path):
    """float16 values lose precision as int8/int4 codes do: restore says so for each, once."""
    for values, expected in (("float16", "stored as float16"), ("int8", "stored as int8 codes"),
                             ("float32", None)):
        container = tmp_path / f"{values}.h5"
        run_cli("pack", real["fer"], "-o", container, "--values", values)
        result = run_cli("restore", container, "-o", tmp_path / f"{values}.hdf5")
        lines = [line for line in result.stderr.splitlines() if "warning" in line]
        assert (lines == []) if expected is None else (len(lines) == 1 and expected in lines[0]), lines


def test_the_lossy_warning_counts_one_tensor_in_the_singular():
    from types import SimpleNamespace

    from wcompress.formats.container.restore import lossy_values

    one = SimpleNamespace(entries={"k": {"quantized": {"bits": 8, "axis": 1}, "dtype": "float32"}})
    two = SimpleNamespace(entries={n: {"value_dtype": "float16", "dtype": "float32"} for n in "ab"})
    assert next(lossy_values(one)).startswith("1 tensor was stored as int8 codes: ")
    assert next(lossy_values(two)).startswith("2 tensors were stored as float16: ")
