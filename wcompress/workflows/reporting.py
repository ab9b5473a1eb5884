"""`report`: sparsity, encodings, bytes stored, and how close each tensor is to two bounds:

- the raw-value bound: the zero mask's entropy plus every non-zero value at its full width (what a
  perfect position code with uncoded values needs);
- the order-0 entropy bound: the mask's entropy plus the non-zero values' empirical entropy, each
  value's bit pattern a symbol (what any coder that sees one symbol at a time needs, tables aside).
  Coders that use context (runs, layer structure) can go below it.
For a tensor stored N:M the mask part of both bounds is log2 C(M, N) bits per group of M: the pattern
is known, so only the choice within each group is information."""

import math
import os
import tempfile
import zlib

import numpy as np

from wcompress.formats import open_model
from wcompress.formats.container import ContainerStore, restore
from wcompress.formats.container.quantization import quantized_label
from wcompress.formats.dtypes import is_float, is_numeric
from wcompress.formats.tensors import QUANTIZATION, quantized_layers


def binary_entropy(p):
    if p <= 0 or p >= 1:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def mask_bits(n, nnz, pattern=None):
    """Bits of the zero mask's entropy: i.i.d. positions, or the choice of N in each group of M."""
    if pattern:
        kept, group = pattern
        return n // group * math.log2(math.comb(group, kept))
    return n * binary_entropy(nnz / n if n else 0)


def information_bound(n, nnz, value_bits, pattern=None):
    """Bytes needed at least: the zero mask's entropy plus the non-zero values at `value_bits` each."""
    return (mask_bits(n, nnz, pattern) + nnz * value_bits) / 8


def value_entropy_bits(values):
    """Total bits of the empirical order-0 entropy of these values, their bit patterns as symbols."""
    if values.size == 0:
        return 0.0
    symbols = np.ascontiguousarray(values).view(f"u{values.dtype.itemsize}") if is_numeric(values.dtype) \
        else values
    _, counts = np.unique(symbols, return_counts=True)
    return float(-(counts * np.log2(counts / values.size)).sum())


def entropy_bound(array, value_dtype, pattern=None):
    """Bytes of the order-0 entropy bound of one tensor with its non-zeros stored as `value_dtype`."""
    flat = array.reshape(-1)
    values = flat[flat != 0].astype(value_dtype, copy=False)
    return (mask_bits(flat.size, values.size, pattern) + value_entropy_bits(values)) / 8


def gzip_bytes(paths, level=6):
    """What `gzip -LEVEL` would make of these files, measured by compressing them (streamed)."""
    total = 0
    for path in paths:
        packer = zlib.compressobj(level, zlib.DEFLATED, 31)
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                total += len(packer.compress(block))
        total += len(packer.flush())
    return total


def report(path, against=None, gzip=True):
    store = open_model(path)
    rows = []
    if isinstance(store, ContainerStore):
        for info in store.tensors:
            e = store.entries[info.name]
            as_stored = store.load_stored(info.name)  # float16 values or integer codes, as stored
            bits = _stored_bits(e, as_stored)
            pattern = tuple(e["pattern"]) if e["encoding"] == "nm" else None
            encoding = "nm %d:%d" % pattern if pattern else e["encoding"]
            rows.append(_row(info, e["nnz"], store.stored_bytes(info.name), encoding, bits,
                             quantized_label(e["quantized"]) if e.get("quantized") else e["value_dtype"],
                             _entropy_bound(as_stored, as_stored.dtype, pattern),
                             sorted({str(r.get("coder", "raw")) for r in e["streams"].values()}), pattern))
        if gzip:
            # A private folder in the system temp dir: nothing named inside the file decides where we write.
            with tempfile.TemporaryDirectory(prefix="wcompress-report-") as work:
                written = restore(path, work + os.sep)
                gz = gzip_bytes(written.files)
                dense_file = written.bytes
        kind = store.source_format
    else:
        for info in store.tensors:
            array = store.load(info.name)
            nnz = int(np.count_nonzero(array)) if array.dtype != object else info.size
            rows.append(_row(info, nnz, info.nbytes, "dense", np.dtype(info.dtype).itemsize * 8, str(info.dtype),
                             _entropy_bound(array, info.dtype), ["raw"]))
        gz = gzip_bytes(store.files()) if gzip else None
        dense_file = store.bytes
        kind = store.format
    n = sum(r["elements"] for r in rows)
    nnz = sum(r["nonzeros"] for r in rows)
    bound = sum(r["bound_bytes"] for r in rows)
    entropy = sum(r["entropy_bound_bytes"] for r in rows)
    stored = sum(r["stored_bytes"] for r in rows)
    dense_f32 = sum(r["elements"] * 4 for r in rows if is_float(np.dtype(r["dtype"])))
    totals = {
        "file_bytes": store.bytes,
        "tensor_stored_bytes": stored,
        "dense_bytes": sum(r["original_bytes"] for r in rows),
        "dense_float32_bytes": dense_f32,
        "bound_bytes": bound,
        "sparsity": 1 - nnz / n if n else 0.0,
        "bits_per_weight": 8 * stored / n if n else 0.0,
        "file_over_bound": store.bytes / bound if bound else None,
        "entropy_bound_bytes": entropy,
        "file_over_entropy_bound": store.bytes / entropy if entropy else None,
        "tensors_over_entropy_bound": stored / entropy if entropy else None,
        "file_over_dense": store.bytes / sum(r["original_bytes"] for r in rows) if rows else None,
        "dense_model_file_bytes": dense_file if gzip or not isinstance(store, ContainerStore) else None,
        "gzip_dense_bytes": gz if gzip else None,
    }
    if against:
        original = open_model(against)
        totals["against"] = against
        totals["against_bytes"] = original.bytes
        totals["file_over_against"] = store.bytes / original.bytes
    return {"path": path, "kind": "container" if isinstance(store, ContainerStore) else "model",
            "container_version": store.version if isinstance(store, ContainerStore) else None,
            "format": kind, "tensors": rows, "totals": totals, "quantized_layers": _quantized(store, rows)}


def _stored_bits(entry, as_stored):
    """Bits of one stored value: the value dtype's, an int8/int4 code's, or what ecq's widest level needs."""
    quantized = entry.get("quantized")
    if not quantized:
        return np.dtype(entry["value_dtype"]).itemsize * 8
    if "ecq" in quantized:
        top = int(np.abs(as_stored).max(initial=0))
        return max(1, int(np.ceil(np.log2(2 * top + 1))))
    return quantized["bits"]


def _quantized(store, rows):
    """The layers the input already held as integer codes: their stored bytes (codes and scales) per weight."""
    stored = {}
    for r in rows:
        if r["role"] in QUANTIZATION:
            stored[r["layer"]] = stored.get(r["layer"], 0) + r["stored_bytes"]
    return [{"layer": layer, "code_bits": bits, "weights": weights, "bytes": size, "stored_bytes": stored[layer],
             "bits_per_weight": 8 * stored[layer] / weights if weights else 0.0}
            for layer, (bits, weights, size) in quantized_layers(store.tensors, store.quantization_modes).items()]


def _entropy_bound(array, value_dtype, pattern=None):
    if array.dtype == object:
        return float(array.nbytes)
    return entropy_bound(array, np.dtype(value_dtype) if np.dtype(value_dtype).kind == array.dtype.kind
                         else array.dtype, pattern)


def _row(info, nnz, stored, encoding, value_bits, value_dtype, entropy, coders, pattern=None):
    bound = information_bound(info.size, nnz, value_bits, pattern)
    return {
        "name": info.name, "layer": info.layer, "role": info.role, "dtype": str(np.dtype(info.dtype)),
        "shape": list(info.shape), "elements": info.size, "nonzeros": nnz,
        "sparsity": 1 - nnz / info.size if info.size else 0.0, "encoding": encoding, "coders": coders,
        "value_dtype": value_dtype, "original_bytes": info.nbytes, "stored_bytes": stored, "bound_bytes": bound,
        "stored_over_bound": stored / bound if bound else None, "entropy_bound_bytes": entropy,
        "bits_per_weight": 8 * stored / info.size if info.size else 0.0,
        "stored_over_entropy_bound": stored / entropy if entropy else None,
    }
