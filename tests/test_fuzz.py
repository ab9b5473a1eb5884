"""Hostile input: crafted files of every HDF5 kind and of containers are one-line errors (exit 2), and a
bounded fuzz run in every `make test` (`make fuzz` runs the long one): damaged copies of real small
models of every format and of containers, through profile / strip / pack / restore / report."""

import json
import lzma
import os
import shutil
import tempfile
import zipfile
import zlib

import fuzzing
import h5py
import numpy as np
import pytest
from helpers import digest, run_cli, run_error

KERAS3_KERNEL = "layers/dense/vars/0"


def _copy(src, folder, name=None):
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, name or os.path.basename(src))
    shutil.copy(src, target)
    return target


def _never_written(h5):
    del h5[KERAS3_KERNEL]
    h5.create_dataset(KERAS3_KERNEL, shape=(2**17, 2**14), dtype="f8")  # 16 GiB declared, nothing stored


def _null_dataspace(h5):
    del h5[KERAS3_KERNEL]
    h5.create_dataset(KERAS3_KERNEL, data=h5py.Empty("f4"))


def _external_storage(h5):
    secret = os.path.join(os.path.dirname(h5.filename), "secret.bin")
    with open(secret, "wb") as fh:
        fh.write(bytes(12 * 32 * 4))
    del h5[KERAS3_KERNEL]
    h5.create_dataset(KERAS3_KERNEL, shape=(12, 32), dtype="f4", external=[(secret, 0, 12 * 32 * 4)])


def _external_link(h5):
    other = os.path.join(os.path.dirname(h5.filename), "other.h5")
    with h5py.File(other, "w") as fh:
        fh["kernel"] = np.zeros((12, 32), np.float32)
    del h5[KERAS3_KERNEL]
    h5[KERAS3_KERNEL] = h5py.ExternalLink(other, "/kernel")


@pytest.mark.parametrize("craft, message", [
    (_never_written, "declares 17,179,869,184 bytes but the file holds 0"),
    (_null_dataspace, "is not a tensor dataset"),
    (_external_storage, "keeps its data in an external file"),
    (_external_link, "link to another file refused"),
])
@pytest.mark.parametrize("command", ["profile", "strip"])
def test_crafted_weights_h5_is_refused(tiny, tmp_path, craft, message, command):
    src = _copy(tiny["weights_h5"], tmp_path / "in")
    with h5py.File(src, "r+") as h5:
        craft(h5)
    before = digest(tmp_path / "in")
    out = tmp_path / "out" / "x.weights.h5"
    line = run_error(command, src, *(["-o", out] if command == "strip" else []))
    assert message in line and src in line
    assert digest(tmp_path / "in") == before and not os.path.exists(tmp_path / "out")


LEGACY_KERNEL = "dense_1/dense_1/kernel:0"


def _replace(name, new):
    def craft(h5):
        del h5[name]
        h5[name] = new(h5) if callable(new) else new
    return craft


@pytest.mark.parametrize("craft, message", [
    (_replace(LEGACY_KERNEL, lambda h5: h5py.SoftLink("/nowhere")), "not a readable HDF5 model file"),
    (_replace(LEGACY_KERNEL, lambda h5: h5.create_group("stray")), "is not a tensor dataset"),
    (lambda h5: h5.attrs.__setitem__("layer_names", 7), "attribute layer_names of / is not a list of names"),
    (lambda h5: h5.attrs.__setitem__("layer_names", np.array([b"masking_1", b"no_such_layer"])),
     "'no_such_layer' listed in layer_names is missing"),
    (lambda h5: h5["dense_1"].__setitem__("loop", h5["dense_1"]), "nested deeper than"),
])
def test_crafted_legacy_h5_is_refused(real, tmp_path, craft, message):
    src = _copy(real["mhcnuggets"], tmp_path / "in", "mhc.h5")
    with h5py.File(src, "r+") as h5:
        craft(h5)
    line = run_error("strip", src, "-o", tmp_path / "out" / "x.h5")
    assert message in line and src in line and not os.path.exists(tmp_path / "out")


def _rewrite_zip(src, target, replace):
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for item in archive.infolist():
            out.writestr(item.filename, replace.get(item.filename, archive.read(item.filename)))


def test_keras_zip_bomb_refused_before_extraction(tiny, tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.keras"
    _rewrite_zip(tiny["keras"], bomb, {"model.weights.h5": bytes(256 * 2**20)})  # 256 MiB of zeros: ~250 KB zipped
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    line = run_error("profile", bomb)
    assert "zip bomb" in line and str(bomb) in line
    assert os.listdir(scratch) == []  # nothing was extracted


def test_deeply_nested_keras_config(tiny, tmp_path):
    bad = tmp_path / "nested.keras"
    _rewrite_zip(tiny["keras"], bad, {"config.json": ("[" * 100000 + "]" * 100000).encode()})
    assert str(bad) in run_error("profile", bad)


def _container(tiny, tmp_path):
    container = tmp_path / "c.h5"
    run_cli("pack", tiny["weights_h5"], "-o", container)
    return container


def _edit_index(container, edit):
    with h5py.File(container, "r+") as h5:
        index = json.loads(lzma.decompress(h5["index"][()].tobytes()))
        edit(h5, index)
        packed = np.frombuffer(lzma.compress(json.dumps(index).encode()), dtype=np.uint8)
        del h5["index"]
        h5["index"] = packed
        h5.attrs["index_crc32"] = zlib.crc32(packed.tobytes())


def test_container_declaring_too_much_in_all_is_refused(tiny, tmp_path):
    """Each crafted entry stays under the per-tensor floor; together they would be hours of work."""
    container = _container(tiny, tmp_path)

    def many_zero_tensors(h5, index):
        for n in range(64):  # 64 MiB each, all zeros: nothing stored
            index["tensors"].append({"name": f"crafted/{n}", "shape": [4096, 4096], "dtype": "float32",
                                     "layer": "x", "role": "kernel", "order": 0, "encoding": "coo", "nnz": 0,
                                     "entries": 0, "value_dtype": "float32", "fp16_overflow": False,
                                     "streams": {"index": {"pool": "pool0", "count": 0, "dtype": "uint8"},
                                                 "values": {"pool": "pool0", "count": 0,
                                                            "dtype": "float32"}}})

    _edit_index(container, many_zero_tensors)
    assert "bytes in all" in run_error("profile", container, "--json")


def test_container_index_never_written_is_refused(tiny, tmp_path):
    container = _container(tiny, tmp_path)
    with h5py.File(container, "r+") as h5:
        del h5["index"]
        h5.create_dataset("index", shape=(2**34,), dtype="u1")  # 16 GiB declared, nothing stored
    assert "declares 17,179,869,184 bytes" in run_error("profile", container)


def test_container_stream_in_an_external_file_is_refused(tiny, tmp_path):
    container = _container(tiny, tmp_path)
    with h5py.File(container, "r+") as h5:
        pool = h5["streams/pool0"]
        size = pool.shape[0]
        secret = tmp_path / "secret.bin"
        secret.write_bytes(pool[()].tobytes())
        del h5["streams/pool0"]
        h5["streams"].create_dataset("pool0", shape=(size,), dtype="u1", external=[(str(secret), 0, size)])
    assert "keeps its data in an external file" in run_error("restore", container, "-o", tmp_path / "r" / "")
    assert not os.path.exists(tmp_path / "r")


def test_report_restores_only_inside_a_private_temp_folder(tiny, tmp_path):
    container = _container(tiny, tmp_path / "c")

    def rename(h5, index):  # a crafted file: the attribute and its checksummed copy agree
        h5.attrs["source_name"] = index["attributes"]["source_name"] = str(tmp_path / "escaped.weights.h5")

    _edit_index(container, rename)
    run_cli("report", container)
    assert os.listdir(tmp_path) == ["c"] and os.listdir(tmp_path / "c") == ["c.h5"]


def test_damaged_inputs_are_errors_never_crashes_or_silent_corruption(tmp_path):
    """300 cases (about 90 s on two cores): byte damage and crafted edits of every format."""
    counts, failures = fuzzing.fuzz(cases=300, seed=20261122, corpus_dir=str(tmp_path / "corpus"), log=lambda _: None)
    assert failures == []
    assert counts["cases"] == 300 and counts["exit0"] + counts["exit2"] == 300
    assert counts["exit2"] > 60 and counts["exit0"] > 30  # the mutations both break and spare files
