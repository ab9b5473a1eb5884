"""An HDF5 file without tensor data as a JSON tree: groups, attributes and each dataset's shape and dtype;
and a `.keras` archive as its members: text as text, its HDF5 weights file as such a tree.

A container stores a Keras skeleton (structure, attributes, config; every tensor an empty placeholder) this
way instead of as the file's bytes: the tree xz-compresses with the container's index into less than half
of the image's B-trees and object headers, and names the index already holds cost almost nothing.
`describe` gives the tree only when `rebuild` reproduces it exactly; otherwise the caller keeps the file."""

import os
import tempfile
import zipfile

import h5py
import numpy as np

from wcompress.formats.h5util import NO_TIMES, create_file, create_group

# Bounds a tree read from a container is held to before anything is created from it.
MAX_DEPTH = 32


MAX_NODES = 1_000_000


MAX_DIMENSIONS = 32


MAX_MEMBERS = 1000


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


ZIP_SIGNATURE = b"PK\x03\x04"


_NUMERIC = {np.dtype(t).str for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "?")}


class Unsupported(ValueError):
    """The file holds something a tree does not describe (data, an unusual type): keep the file's bytes."""


def describe(path):
    """The tree of the HDF5 file or zip archive at `path`, or None when `rebuild` would not reproduce it."""
    try:
        tree = _describe(path)
        with tempfile.TemporaryDirectory(prefix="wcompress-tree-") as work:
            copy = os.path.join(work, "tree")
            rebuild(tree, copy)
            again = _describe(copy)
    except Unsupported:
        return None
    return tree if again == tree else None


def rebuild(tree, path):
    """Write the file `tree` describes to `path`; ValueError for a tree that is not one of ours."""
    if isinstance(tree, dict) and "zip" in tree:
        _rebuild_zip(tree, path)
    else:
        _rebuild_hdf5(tree, path)


def _rebuild_hdf5(tree, path):
    _check(tree, 0, [0])
    with create_file(path) as h5:
        _fill(h5, tree)


def _describe(path):
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(HDF5_SIGNATURE):
        with h5py.File(path, "r") as h5:
            return _node(h5, 0)
    if head.startswith(ZIP_SIGNATURE):
        return _describe_zip(path)
    raise Unsupported("neither HDF5 nor zip")


_MEMBER_FIELDS = ("date_time", "compress_type", "external_attr", "create_system")


def _describe_zip(path):
    members = []
    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory(prefix="wcompress-tree-") as work:
        for info in archive.infolist():
            if info.comment or info.extra:
                raise Unsupported("a zip member with a comment or extra fields")
            member = {"name": info.filename, **{f: getattr(info, f) for f in _MEMBER_FIELDS}}
            member["date_time"] = list(member["date_time"])
            data = archive.read(info)
            if data.startswith(HDF5_SIGNATURE):
                inner = os.path.join(work, "member.h5")
                with open(inner, "wb") as fh:
                    fh.write(data)
                with h5py.File(inner, "r") as h5:
                    member["hdf5"] = _node(h5, 0)
            else:
                try:
                    member["text"] = data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise Unsupported("a binary zip member") from exc
            members.append(member)
    return {"zip": members}


def _rebuild_zip(tree, path):
    members = tree["zip"]
    if set(tree) != {"zip"} or not isinstance(members, list) or len(members) > MAX_MEMBERS:
        raise ValueError("skeleton archive is not a member list")
    with zipfile.ZipFile(path, "w") as archive, tempfile.TemporaryDirectory(prefix="wcompress-tree-") as work:
        for member in members:
            info = _member_info(member)
            if "hdf5" in member:
                inner = os.path.join(work, "member.h5")
                _rebuild_hdf5(member["hdf5"], inner)
                with open(inner, "rb") as fh:
                    data = fh.read()
            else:
                data = member["text"].encode("utf-8")
            archive.writestr(info, data)


def _member_info(member):
    """A zip member's header from the tree, every field checked: the name a plain relative path."""
    if not isinstance(member, dict) or set(member) - {"name", "text", "hdf5", *_MEMBER_FIELDS} \
            or len({"text", "hdf5"} & set(member)) != 1 or not isinstance(member.get("text", ""), str):
        raise ValueError("skeleton archive member is malformed")
    name = member.get("name")
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or "\0" in name \
            or ".." in name.split("/"):
        raise ValueError(f"skeleton archive member name {name!r} is not a plain relative path")
    stamp = member.get("date_time")
    if not isinstance(stamp, list) or len(stamp) != 6 or not all(type(v) is int for v in stamp) \
            or not 1980 <= stamp[0] <= 2107 or not all(0 <= v <= 60 for v in stamp[1:]):
        raise ValueError("skeleton archive member has no valid date")
    info = zipfile.ZipInfo(name, tuple(stamp))
    for field, allowed in (("compress_type", (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)),
                           ("external_attr", range(2**32)), ("create_system", range(256))):
        value = member.get(field)
        if type(value) is not int or value not in allowed:
            raise ValueError(f"skeleton archive member has an invalid {field}")
        setattr(info, field, value)
    return info


def _node(item, depth):
    if depth > MAX_DEPTH:
        raise Unsupported("nested too deep")
    node = {"attrs": {name: _attribute(item, name) for name in item.attrs}}
    if isinstance(item, h5py.Dataset):
        if item.id.get_storage_size() or item.dtype.str not in _NUMERIC or item.shape is None:
            raise Unsupported("a dataset holds data or is not a plain numeric array")
        node["dataset"] = [item.dtype.str, list(item.shape)]
        return node
    if not isinstance(item, h5py.Group):
        raise Unsupported("not a group or dataset")
    children = {}
    for name in item:
        link = item.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise Unsupported("a soft or external link")
        children[name] = _node(item[name], depth + 1)
    node["children"] = children
    return node


def _attribute(item, name):
    """[type, shape, values]: shape None for a scalar; strings as their bytes read as latin-1."""
    attr = item.attrs.get_id(name)
    dtype, space = attr.dtype, attr.get_space()
    if space.get_simple_extent_type() != h5py.h5s.SIMPLE and space.get_simple_extent_type() != h5py.h5s.SCALAR:
        raise Unsupported("an attribute without values")
    shape = None if space.get_simple_extent_type() == h5py.h5s.SCALAR else list(space.shape)
    text = h5py.check_string_dtype(dtype)
    if text is not None:
        kind = f"text:{text.encoding}:{text.length or 0}"
        value = np.asarray(item.attrs[name], dtype=object).ravel()
        values = [(v.encode(text.encoding) if isinstance(v, str) else bytes(v)).decode("latin-1") for v in value]
    elif dtype.str in _NUMERIC:
        kind = dtype.str
        values = np.asarray(item.attrs[name]).ravel().tolist()
    else:
        raise Unsupported(f"attribute type {dtype}")
    return [kind, shape, values]


def _fill(group, tree):
    for name, value in tree["attrs"].items():
        _set_attribute(group, name, *value)
    for name, child in tree["children"].items():
        if "dataset" in child:
            dtype, shape = child["dataset"]
            dataset = group.create_dataset(name, shape=tuple(shape), dtype=np.dtype(dtype), **NO_TIMES)
            for key, value in child["attrs"].items():
                _set_attribute(dataset, key, *value)
        else:
            _fill(create_group(group, name), child)


def _set_attribute(item, name, kind, shape, values):
    dims = () if shape is None else tuple(shape)
    if kind.startswith("text:"):
        _, encoding, length = kind.split(":")
        dtype = h5py.string_dtype(encoding, int(length) or None)
        data = [v.encode("latin-1") for v in values]
        if int(length):
            array = np.array(data, dtype=f"S{int(length)}").reshape(dims)
        else:
            array = np.array(data, dtype=object).reshape(dims)
        item.attrs.create(name, array, dtype=dtype)
    else:
        item.attrs.create(name, np.array(values, dtype=np.dtype(kind)).reshape(dims))


def _check(node, depth, count):
    """A tree from a file is data: every name, type, shape and count checked before it is written."""
    count[0] += 1
    if depth > MAX_DEPTH or count[0] > MAX_NODES:
        raise ValueError("skeleton tree is nested too deep or too large")
    if not isinstance(node, dict) or not isinstance(node.get("attrs"), dict):
        raise ValueError("skeleton tree node without attributes")
    for name, value in node["attrs"].items():
        _check_name(name)
        _check_attribute(value)
    if "dataset" in node:
        spec = node["dataset"]
        if set(node) != {"attrs", "dataset"} or not isinstance(spec, list) or len(spec) != 2 \
                or spec[0] not in _NUMERIC or not _is_shape(spec[1]):
            raise ValueError("skeleton tree dataset is not a numeric shape")
        return
    if set(node) != {"attrs", "children"} or not isinstance(node["children"], dict):
        raise ValueError("skeleton tree node is neither a group nor a dataset")
    for name, child in node["children"].items():
        _check_name(name)
        _check(child, depth + 1, count)


def _check_name(name):
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"skeleton tree name {name!r} is not a plain HDF5 name")


def _is_shape(shape):
    return isinstance(shape, list) and len(shape) <= MAX_DIMENSIONS and all(
        type(n) is int and 0 <= n < 2**62 for n in shape)


def _check_attribute(value):
    if not isinstance(value, list) or len(value) != 3 or not isinstance(value[0], str):
        raise ValueError("skeleton tree attribute is not [type, shape, values]")
    kind, shape, values = value
    if not (shape is None or _is_shape(shape)) or not isinstance(values, list):
        raise ValueError("skeleton tree attribute has no shape or values")
    if len(values) != (1 if shape is None else int(np.prod(shape, dtype=object))):
        raise ValueError("skeleton tree attribute's values do not fill its shape")
    if kind.startswith("text:"):
        parts = kind.split(":")
        if len(parts) != 3 or parts[1] not in ("ascii", "utf-8") or not parts[2].isdigit() \
                or int(parts[2]) > 2**20 or not all(isinstance(v, str) and max(map(ord, v), default=0) < 256
                                                    for v in values):
            raise ValueError(f"skeleton tree attribute type {kind!r} is not a text type")
    elif kind not in _NUMERIC or not all(type(v) in (int, float, bool) for v in values):
        raise ValueError(f"skeleton tree attribute type {kind!r} is not a numeric type")
