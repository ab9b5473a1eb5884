"""HDF5 skeletons as trees in the container's index (version 9): exact round trips, a file image kept for
anything a tree does not describe, and a hostile tree refused in one line."""

import json
import lzma
import os
import zlib

import h5py
import numpy as np
import pytest
from helpers import assert_same_tensors, run_error, run_json, stock_tensors

from wcompress.formats import h5tree


def _index(container):
    with h5py.File(container, "r") as h5:
        return json.loads(lzma.decompress(h5["index"][()].tobytes())), sorted(h5)


def _rewrite_index(container, index):
    packed = np.frombuffer(lzma.compress(json.dumps(index).encode()), dtype=np.uint8)
    with h5py.File(container, "r+") as h5:
        del h5["index"]
        h5["index"] = packed
        h5.attrs["index_crc32"] = zlib.crc32(packed.tobytes())


def _crafted_copy(container, tmp_path, edit):
    """A copy of `container` whose index `edit` changed, its checksum recomputed as a crafted file's would be."""
    crafted = str(tmp_path / "crafted.h5")
    with open(container, "rb") as src, open(crafted, "wb") as dst:
        dst.write(src.read())
    index, _ = _index(crafted)
    edit(index)
    _rewrite_index(crafted, index)
    return crafted


def _odd_file(path):
    """Every attribute kind Keras and h5py write: variable and fixed-length text, arrays of both, empty
    arrays, numeric scalars, booleans; nested groups; empty datasets of several dtypes."""
    with h5py.File(path, "w") as h5:
        h5.attrs["vlen"] = "a str with ü"
        h5.attrs.create("fixed", np.array(b"fixed", dtype="S5"))
        h5.attrs["names"] = np.array([b"dense/kernel:0", b"b"], dtype="S14")
        h5.attrs.create("vlen_list", ["x", "yz"], dtype=h5py.string_dtype())
        h5.attrs["empty"] = np.array([], dtype=np.float64)
        h5.attrs["count"] = np.int64(-3)
        h5.attrs["flag"] = np.bool_(True)
        h5.attrs["matrix"] = np.arange(6, dtype=np.float32).reshape(2, 3)
        group = h5.create_group("layers").create_group("dense")
        group.attrs["weight_names"] = np.array([b"kernel"], dtype="S6")
        group.create_dataset("kernel", shape=(3, 4), dtype="float32")
        group.create_dataset("step", shape=(), dtype="int64")
        h5.create_group("empty")


def test_a_tree_rebuilds_exactly(tmp_path):
    source, copy = str(tmp_path / "odd.h5"), str(tmp_path / "copy.h5")
    _odd_file(source)
    tree = h5tree.describe(source)
    assert tree is not None
    assert tree["attrs"]["names"] == ["text:ascii:14", [2], ["dense/kernel:0", "b"]]
    assert tree["children"]["layers"]["children"]["dense"]["children"]["kernel"] == {"attrs": {},
                                                                                    "dataset": ["<f4", [3, 4]]}
    h5tree.rebuild(json.loads(json.dumps(tree)), copy)  # what the index gives back: JSON
    with h5py.File(source, "r") as a, h5py.File(copy, "r") as b:
        for key in a.attrs:
            assert np.array_equal(np.asarray(a.attrs[key]), np.asarray(b.attrs[key])), key
            assert a.attrs.get_id(key).dtype == b.attrs.get_id(key).dtype, key
        assert b["layers/dense/kernel"].shape == (3, 4) and b["layers/dense/step"].dtype == np.int64
    assert h5tree.describe(copy) == tree


def test_what_a_tree_cannot_hold_keeps_the_file(tmp_path):
    """Data, links and unusual types are not a tree's: describe says so and the writer keeps the image."""
    cases = {
        "data": lambda h5: h5.create_dataset("x", data=np.arange(3)),
        "soft_link": lambda h5: h5.__setitem__("link", h5py.SoftLink("/g")),
        "compound": lambda h5: h5.attrs.create("c", np.zeros(1, dtype=[("a", "i4"), ("b", "f4")])),
    }
    for name, make in cases.items():
        path = str(tmp_path / f"{name}.h5")
        with h5py.File(path, "w") as h5:
            h5.create_group("g")
            make(h5)
        assert h5tree.describe(path) is None, name


def test_keras_h5_container_stores_its_skeleton_as_a_tree(real, tmp_path):
    container = str(tmp_path / "fer.h5")
    run_json("pack", real["fer"], "-o", container)
    index, datasets = _index(container)
    assert index["attributes"]["version"] == 9 and "skeleton" not in datasets
    assert list(index["skeleton_trees"]) == ["model.h5"] and index["blobs"] == {}
    assert run_json("report", container)["container_version"] == 9
    restored = run_json("restore", container, "-o", str(tmp_path / "fer-restored.hdf5"))["output"]
    assert_same_tensors(stock_tensors(real["fer"]), stock_tensors(restored))
    with h5py.File(real["fer"], "r") as a, h5py.File(restored, "r") as b:
        assert a.attrs["model_config"] == b.attrs["model_config"]


@pytest.fixture(scope="module")
def mhc_container(real, tmp_path_factory):
    container = str(tmp_path_factory.mktemp("tree") / "mhc.h5")
    run_json("pack", real["mhcnuggets"], "-o", container)
    return container


HOSTILE = {
    "escaping_path": lambda trees: trees.__setitem__("../escaped.h5", trees.pop("model.h5")),
    "absolute_path": lambda trees: trees.__setitem__("/tmp/escaped.h5", trees.pop("model.h5")),
    "dotdot_name": lambda trees: trees["model.h5"]["children"].__setitem__("..", {"attrs": {}, "children": {}}),
    "object_dataset": lambda trees: trees["model.h5"]["children"].__setitem__(
        "x", {"attrs": {}, "dataset": ["|O", [2]]}),
    "short_attribute": lambda trees: trees["model.h5"]["attrs"].__setitem__("a", ["<f8", [4], [1.0]]),
    "text_as_number": lambda trees: trees["model.h5"]["attrs"].__setitem__("a", ["<i8", None, ["1"]]),
    "deep": lambda trees: trees["model.h5"]["children"].__setitem__("d", _nested(100)),
}


def _nested(depth):
    node = {"attrs": {}, "children": {}}
    for _ in range(depth):
        node = {"attrs": {}, "children": {"g": node}}
    return node


@pytest.mark.parametrize("edit", sorted(HOSTILE))
def test_a_hostile_tree_is_refused(mhc_container, tmp_path, edit):
    container = _crafted_copy(mhc_container, tmp_path, lambda index: HOSTILE[edit](index["skeleton_trees"]))
    out = tmp_path / "out"
    message = run_error("restore", container, "-o", str(out) + ".h5")
    assert container in message and ("damaged container" in message or "escapes" in message), message
    assert not os.path.exists(str(out) + ".h5") and not os.path.exists(tmp_path / "escaped.h5")


def test_pooled_streams_lie_end_to_end_and_a_declared_offset_is_refused(mhc_container, tmp_path):
    """Version 9 writes no offsets: each pool's streams lie end to end in index order."""
    index, _ = _index(mhc_container)
    pooled = [ref for entry in index["tensors"] for ref in entry["streams"].values() if "pool" in ref]
    assert pooled and not any("offset" in ref for ref in pooled)
    with h5py.File(mhc_container, "r") as h5:
        assert sum(ref["bytes"] for ref in pooled) == h5["streams/pool0"].shape[0]

    def declare_an_offset(index):
        pooled_entry = next(e for e in index["tensors"] if any("pool" in r for r in e["streams"].values()))
        next(r for r in pooled_entry["streams"].values() if "pool" in r)["offset"] = 0

    container = _crafted_copy(mhc_container, tmp_path, declare_an_offset)
    assert "declares an offset" in run_error("profile", container)


def test_a_keras_archive_skeleton_is_its_members(tiny, tmp_path):
    """A .keras skeleton: config and metadata as text, the weights file as a tree, each member's header kept."""
    container = str(tmp_path / "tiny.h5")
    run_json("pack", tiny["keras"], "-o", container)
    index, datasets = _index(container)
    assert "skeleton" not in datasets and list(index["skeleton_trees"]) == ["model.keras"]
    members = {m["name"]: m for m in index["skeleton_trees"]["model.keras"]["zip"]}
    assert set(members) == {"config.json", "metadata.json", "model.weights.h5"}
    assert json.loads(members["config.json"]["text"])["class_name"] and "children" in members["model.weights.h5"]["hdf5"]
    restored = run_json("restore", container, "-o", str(tmp_path / "r.keras"))["output"]
    assert_same_tensors(stock_tensors(tiny["keras"]), stock_tensors(restored))


@pytest.fixture(scope="module")
def keras_container(tiny, tmp_path_factory):
    container = str(tmp_path_factory.mktemp("tree") / "tiny.h5")
    run_json("pack", tiny["keras"], "-o", container)
    return container


def _member(trees, name):
    return next(m for m in trees["model.keras"]["zip"] if m["name"] == name)


HOSTILE_ARCHIVES = {
    "escaping_member": lambda trees: _member(trees, "config.json").update(name="../escaped.json"),
    "absolute_member": lambda trees: _member(trees, "config.json").update(name="/tmp/escaped.json"),
    "bad_date": lambda trees: _member(trees, "config.json").update(date_time=[1970, 1, 1, 0, 0, 0]),
    "bad_compression": lambda trees: _member(trees, "config.json").update(compress_type=99),
    "text_and_tree": lambda trees: _member(trees, "config.json").update(hdf5={"attrs": {}, "children": {}}),
    "zip_in_zip": lambda trees: _member(trees, "model.weights.h5").update(hdf5={"zip": []}),
    "dotdot_in_weights": lambda trees: _member(trees, "model.weights.h5")["hdf5"]["children"].__setitem__(
        "..", {"attrs": {}, "children": {}}),
}


@pytest.mark.parametrize("edit", sorted(HOSTILE_ARCHIVES))
def test_a_hostile_archive_tree_is_refused(keras_container, tmp_path, edit):
    container = _crafted_copy(keras_container, tmp_path,
                              lambda index: HOSTILE_ARCHIVES[edit](index["skeleton_trees"]))
    message = run_error("restore", container, "-o", str(tmp_path / "out.keras"))
    assert container in message and "damaged container" in message, message
    assert not os.path.exists(tmp_path / "out.keras") and not os.path.exists(tmp_path / "escaped.json")
