"""Stream coders of container version 3: bit-exact round trips, sizes near the order-0 entropy, and
damaged or crafted coded streams as one-line errors."""

import gzip
import json
import lzma
import math
import zlib

import h5py
import numpy as np
import pytest
from helpers import assert_same_tensors, run_cli, run_error, run_json, stock_tensors

from wcompress.formats.container import coders
from wcompress.formats.container.layout import read_attributes


def _streams():
    rng = np.random.default_rng(0)
    weights = rng.standard_normal(50_000).astype(np.float32) * 0.05
    return {
        "float32": weights,
        "float16": weights.astype(np.float16),
        "mask": np.packbits(rng.random(200_000) < 0.25),
        "uint16": np.sort(rng.choice(60_000, 5_000, replace=False)).astype(np.uint16),
        "uint32": np.arange(0, 3_000_000, 7, dtype=np.uint32),
        "tiny": np.array([1.5, -2.0], dtype=np.float32),
        "empty": np.zeros(0, dtype=np.float16),
    }


@pytest.mark.parametrize("name", list(_streams()))
def test_every_coder_round_trips_bit_exact(name):
    array = _streams()[name]
    for coder in coders.applicable(array):
        stored = coders.encode(array, coder)
        back = coders.decode(coder, stored, array.dtype, array.size)
        assert back.dtype == array.dtype and back.tobytes() == array.tobytes()
    coder, stored = coders.smallest(array)
    assert stored.nbytes == min(coders.encode(array, c).nbytes for c in coders.applicable(array))


def test_levels_coder_round_trips_signed_integers_and_refuses_what_does_not_fit():
    rng = np.random.default_rng(2)
    for array in (rng.integers(-90, -20, 500).astype(np.int16), rng.integers(-3, 4, 70_000).astype(np.int32),
                  np.zeros(0, np.int16)):
        stored = coders.encode(array, "levels")
        back = coders.decode("levels", stored, array.dtype, array.size)
        assert back.dtype == array.dtype and np.array_equal(back, array)
    wide = coders.encode(np.array([40_000, -2], np.int32), "levels")  # holds a value no int16 holds
    with pytest.raises(ValueError, match="beyond int16"):
        coders.decode("levels", wide, np.int16, 2)
    with pytest.raises(ValueError):
        coders.decode("levels", wide, np.int32, 3)
    assert not coders.levels_codable(np.array([1 << 30], np.int32)) and not coders.levels_codable(np.ones(3, np.uint16))


def test_positions_code_near_their_entropy():
    """The container codes positions as a packed mask or as delta8 gaps, whichever is smaller: at every
    density one of them lands within 3% of the mask's entropy."""
    from wcompress.formats.container import encodings

    rng = np.random.default_rng(1)
    for density in (0.5, 0.25, 0.1, 0.05, 0.02):
        bits = rng.random(800_000) < density
        mask = coders.smallest(np.packbits(bits))[1].nbytes
        gaps = coders.smallest(encodings.encode(bits.astype(np.float32), "delta8", "float32")["gap"])[1].nbytes
        p = bits.mean()
        entropy_bytes = bits.size * -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / 8
        assert min(mask, gaps) <= 1.03 * entropy_bytes


@pytest.mark.parametrize("coder", ["zstd", "pcodec"])
def test_damaged_coded_streams_are_errors(coder):
    array = _streams()["float16"]
    stored = coders.encode(array, coder)
    for damaged, count in ((stored[: stored.size // 2], array.size), (stored, array.size + 1),
                           (stored, array.size - 1), (np.zeros(16, np.uint8), array.size)):
        with pytest.raises(ValueError):
            coders.decode(coder, damaged, array.dtype, count)


@pytest.fixture(scope="module")
def sparse_checkpoint(tmp_path_factory):
    """A TF1-style checkpoint of trained-looking weights at 75% sparsity."""
    from wcompress.formats.bundle import write_bundle

    rng = np.random.default_rng(2)
    root = tmp_path_factory.mktemp("coded")
    tensors = {}
    for i, shape in enumerate([(3, 3, 64, 128), (512, 256), (256,)]):
        w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        w[np.abs(w) < np.quantile(np.abs(w), 0.75)] = 0
        tensors[f"layer{i}/kernel"] = w
    prefix = str(root / "ck" / "model.ckpt")
    write_bundle(prefix, tensors.items())
    return prefix, tensors


def test_default_container_is_coded_and_near_the_entropy_bound(sparse_checkpoint, tmp_path):
    prefix, tensors = sparse_checkpoint
    for values in ("float32", "float16"):
        container = tmp_path / f"{values}.h5"
        run_cli("pack", prefix, "-o", container, "--values", values)
        raw = tmp_path / f"{values}-raw.h5"
        run_cli("pack", prefix, "-o", raw, "--values", values, "--codec", "none")
        report = run_json("report", container, "--no-gzip")
        # The order-0 bound written from its definition: mask entropy + empirical entropy of the values.
        bound = 0.0
        for w in tensors.values():
            flat = w.reshape(-1)
            nz = flat[flat != 0].astype(values)
            p = nz.size / flat.size
            _, counts = np.unique(nz.view(f"u{nz.dtype.itemsize}"), return_counts=True)
            bound += flat.size * -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / 8
            bound -= (counts * np.log2(counts / nz.size)).sum() / 8
        assert report["totals"]["entropy_bound_bytes"] == pytest.approx(bound, rel=1e-9)
        assert report["totals"]["file_bytes"] < raw.stat().st_size
        if values == "float16":  # float32 values are nearly all distinct: their empirical entropy means little
            assert report["totals"]["tensors_over_entropy_bound"] <= 1.03
        else:  # against gzip -9 of the dense float32 tensors
            dense = b"".join(w.tobytes() for w in tensors.values())
            assert report["totals"]["tensor_stored_bytes"] <= 0.80 * len(gzip.compress(dense, 9))
        restored = run_json("restore", container, "-o", str(tmp_path / f"r-{values}") + "/")["output"]
        back = stock_tensors(restored)
        for name, w in tensors.items():
            assert np.array_equal(back[name], w.astype(values).astype(np.float32))
        with h5py.File(container) as h5:
            attributes = read_attributes(h5)  # strings stored fixed-length: h5py reads them as bytes
            assert attributes["version"] == 5 and attributes["codec"] == "auto"


def _rewrite_index(h5, index):
    packed = np.frombuffer(lzma.compress(json.dumps(index).encode()), dtype=np.uint8)
    del h5["index"]
    h5["index"] = packed
    h5.attrs["index_crc32"] = zlib.crc32(packed.tobytes())


def test_crafted_coded_streams_are_one_line_errors(sparse_checkpoint, tmp_path):
    prefix, _ = sparse_checkpoint
    container = tmp_path / "c.h5"
    run_cli("pack", prefix, "-o", container)
    with h5py.File(container) as h5:
        index = json.loads(lzma.decompress(h5["index"][()].tobytes()))
    coded = [(e, s) for e in index["tensors"] for s, r in e["streams"].items() if r.get("coder") not in (None, "raw")]
    assert coded
    entry, stream = coded[0]
    cases = {
        "unknown coder": {"coder": "brotli"},
        "stored size": {"bytes": -1},
        "outside": {"bytes": 10**9},
    }
    for problem, change in cases.items():
        copy = tmp_path / f"{problem}.h5"
        copy.write_bytes(container.read_bytes())
        crafted = json.loads(json.dumps(index))
        target = next(e for e in crafted["tensors"] if e["name"] == entry["name"])
        target["streams"][stream].update(change)
        with h5py.File(copy, "r+") as h5:
            _rewrite_index(h5, crafted)
        message = run_error("restore", copy, "-o", str(tmp_path / problem) + "/")
        assert str(copy) in message and "\n" not in message.strip()
    # A coded stream whose bytes are damaged, its checksum made to match: the decoder says so.
    copy = tmp_path / "damaged.h5"
    copy.write_bytes(container.read_bytes())
    ref = entry["streams"][stream]
    with h5py.File(copy, "r+") as h5:
        key = ref.get("dataset", ref.get("pool"))
        data = h5["streams"][key][()]
        start = ref.get("offset", 0)
        data[start:start + ref["bytes"]] = np.random.default_rng(3).integers(0, 256, ref["bytes"], dtype=np.uint8)
        h5["streams"][key][...] = data
        crafted = json.loads(json.dumps(index))
        crafted["checksums"]["streams/" + key] = zlib.crc32(data.tobytes())
        _rewrite_index(h5, crafted)
    message = run_error("restore", copy, "-o", str(tmp_path / "damaged") + "/")
    assert "damaged" in message or "cannot read" in message


def test_huge_all_zero_tensor_keeps_raw_streams(tmp_path, monkeypatch):
    """A reader refuses tensors decoding to more than 4096x their stored bytes (above a floor): an
    all-zero tensor would code to a few bytes, so the writer keeps its streams raw."""
    from wcompress.formats.container import layout as container_module
    from wcompress.formats.bundle import write_bundle

    monkeypatch.setattr(container_module, "EXPANSION_FLOOR", 1024)
    prefix = str(tmp_path / "z" / "model.ckpt")
    tensors = {"zeros": np.zeros((1024, 1024), np.float32), "w": np.ones((64, 64), np.float32)}
    write_bundle(prefix, tensors.items())
    out = tmp_path / "z.h5"
    run_cli("pack", prefix, "-o", out)
    with h5py.File(out) as h5:
        index = json.loads(lzma.decompress(h5["index"][()].tobytes()))
    zeros = next(e for e in index["tensors"] if e["name"] == "zeros")
    assert {r["coder"] for r in zeros["streams"].values()} == {"raw"}
    restored = run_json("restore", out, "-o", str(tmp_path / "r") + "/")["output"]
    assert_same_tensors(stock_tensors(prefix), stock_tensors(restored))


def test_codec_choices_offer_only_what_is_installed():
    import importlib.util

    from wcompress.cli import cli

    pack = cli.commands["pack"]
    codec = next(p for p in pack.params if p.name == "codec")
    has_plugin = importlib.util.find_spec("hdf5plugin") is not None
    assert ("zstd" in codec.type.choices) == has_plugin
    assert codec.default == "auto"
