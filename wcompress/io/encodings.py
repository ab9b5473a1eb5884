"""Sparse encodings of one tensor, their exact sizes, and validating decoders.

Every stream is a flat numpy array. Sizes are computed from counts before anything is encoded, so
the smallest encoding is chosen without building the others.
"""

import numpy as np

from ..errors import WcompressError

ENCODINGS = ("dense", "bitmask", "coo", "csr", "delta8")
_GAP = 256  # delta8: one byte per gap (1..256); a longer gap is bridged by explicit zero fillers


def narrowest_uint(max_value):
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise WcompressError(f"index {max_value} does not fit in 64 bits")


def _csr_shape(shape):
    return (shape[0], int(np.prod(shape[1:], dtype=np.int64))) if len(shape) >= 2 else None


def positions(flat):
    return np.flatnonzero(flat)


def delta8_entries(pos):
    """Number of delta8 entries (non-zeros plus fillers) for sorted non-zero positions."""
    if pos.size == 0:
        return 0
    gaps = np.diff(pos, prepend=-1)
    return int(pos.size + ((gaps - 1) // _GAP).sum())


def sizes(array, value_dtype):
    """Exact bytes of every applicable encoding of `array` with values stored as `value_dtype`."""
    flat = array.reshape(-1)
    n = flat.size
    nnz = int(np.count_nonzero(flat))
    v = np.dtype(value_dtype).itemsize
    out = {"dense": n * v, "bitmask": -(-n // 8) + nnz * v}
    if n:
        out["coo"] = nnz * (narrowest_uint(n - 1).itemsize + v)
    grid = _csr_shape(array.shape)
    if grid and grid[0] and grid[1]:
        out["csr"] = (grid[0] + 1) * narrowest_uint(nnz).itemsize + nnz * (narrowest_uint(grid[1] - 1).itemsize + v)
    # delta8 costs at least one byte per non-zero: only count its fillers when it could win.
    if nnz and nnz * (1 + v) < min(out.values()):
        out["delta8"] = delta8_entries(positions(flat)) * (1 + v)
    return out, nnz


def encode(array, encoding, value_dtype):
    """The streams of one encoding: name -> flat numpy array."""
    flat = array.reshape(-1)
    vd = np.dtype(value_dtype)
    if encoding == "dense":
        return {"values": flat.astype(vd, copy=False)}
    if encoding == "bitmask":
        mask = flat != 0
        return {"mask": np.packbits(mask), "values": flat[mask].astype(vd, copy=False)}
    pos = positions(flat)
    values = flat[pos].astype(vd, copy=False)
    if encoding == "coo":
        return {"index": pos.astype(narrowest_uint(max(flat.size - 1, 0))), "values": values}
    if encoding == "csr":
        rows, cols = _csr_shape(array.shape)
        row, col = np.divmod(pos, cols)
        indptr = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(row, minlength=rows), out=indptr[1:])
        return {"indptr": indptr.astype(narrowest_uint(pos.size)), "col": col.astype(narrowest_uint(cols - 1)),
                "values": values}
    if encoding == "delta8":
        gaps = np.diff(pos, prepend=-1)
        fillers = (gaps - 1) // _GAP
        last = np.cumsum(fillers + 1) - 1
        codes = np.full(int(last[-1]) + 1 if last.size else 0, _GAP - 1, dtype=np.uint8)
        codes[last] = (gaps - _GAP * fillers - 1).astype(np.uint8)
        out_values = np.zeros(codes.size, dtype=vd)
        out_values[last] = values
        return {"gap": codes, "values": out_values}
    raise WcompressError(f"unknown encoding {encoding!r}")


STREAMS = {
    "dense": ("values",),
    "bitmask": ("mask", "values"),
    "coo": ("index", "values"),
    "csr": ("indptr", "col", "values"),
    "delta8": ("gap", "values"),
}


def stream_lengths(encoding, shape, nnz, entries=None):
    """The lengths the streams must have, from the declared shape and counts: checked before reading."""
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if encoding == "dense":
        return {"values": n}
    if encoding == "bitmask":
        return {"mask": -(-n // 8), "values": nnz}
    if encoding == "coo":
        return {"index": nnz, "values": nnz}
    if encoding == "csr":
        grid = _csr_shape(shape)
        if grid is None:
            raise WcompressError("csr encoding needs a tensor of rank 2 or more")
        return {"indptr": grid[0] + 1, "col": nnz, "values": nnz}
    if encoding == "delta8":
        return {"gap": entries, "values": entries}
    raise WcompressError(f"unknown encoding {encoding!r}")


def decode(encoding, streams, shape, dtype, what="tensor"):
    """Rebuild a dense tensor from validated streams. Any inconsistency is a WcompressError."""
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    dtype = np.dtype(dtype)
    values = streams["values"]

    def bad(problem):
        return WcompressError(f"{what}: {problem}")

    if encoding == "dense":
        if values.size != n:
            raise bad(f"dense stream holds {values.size} values, shape needs {n}")
        return values.astype(dtype, copy=False).reshape(shape)
    out = np.zeros(n, dtype=dtype)
    if encoding == "bitmask":
        if streams["mask"].dtype != np.uint8:
            raise bad("mask is not a byte stream")
        mask = np.unpackbits(streams["mask"], count=n).astype(bool)
        if int(mask.sum()) != values.size:
            raise bad(f"mask marks {int(mask.sum())} non-zeros, {values.size} values stored")
        out[mask] = values
    elif encoding == "coo":
        index = streams["index"]
        if index.size != values.size:
            raise bad("index and values differ in length")
        if index.dtype.kind != "u":
            raise bad(f"index stream has signed type {index.dtype}")
        if index.size and int(index.max()) >= n:
            raise bad(f"index {int(index.max())} out of range for {n} elements")
        if np.any(np.diff(index.astype(np.int64)) <= 0):
            raise bad("index positions are not strictly increasing")  # a repeat would silently collapse
        out[index] = values
    elif encoding == "csr":
        indptr, col = streams["indptr"].astype(np.int64), streams["col"]
        rows, cols = _csr_shape(shape)
        if indptr.size != rows + 1 or indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != values.size:
            raise bad("row pointers are inconsistent with the shape or the values")
        if col.size != values.size or (col.size and int(col.max()) >= cols):
            raise bad("column index out of range")
        if col.dtype.kind != "u":
            raise bad(f"column stream has signed type {col.dtype}")
        row = np.repeat(np.arange(rows, dtype=np.int64), np.diff(indptr))
        flat_pos = row * cols + col
        if np.any(np.diff(flat_pos) <= 0):
            raise bad("column indexes are not strictly increasing within rows")
        out[flat_pos] = values
    elif encoding == "delta8":
        gap = streams["gap"]
        if gap.size != values.size or gap.dtype != np.uint8:
            raise bad("gap and values differ in length, or gaps are not bytes")
        pos = np.cumsum(gap.astype(np.int64) + 1) - 1
        if pos.size and pos[-1] >= n:
            raise bad(f"position {int(pos[-1])} out of range for {n} elements")
        out[pos] = values
    else:
        raise bad(f"unknown encoding {encoding!r}")
    return out.reshape(shape)
