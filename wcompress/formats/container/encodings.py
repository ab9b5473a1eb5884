"""Sparse encodings of one tensor, their exact sizes, and validating decoders.

Every stream is a flat numpy array. Sizes are computed from counts before anything is encoded, so
the smallest encoding is chosen without building the others.
"""

import functools
import itertools

import numpy as np

from wcompress.errors import WcompressError

# ecq: a quantized tensor's levels range-coded with context models (levels.py); chosen by --values ecq only.
ENCODINGS = ("dense", "bitmask", "coo", "csr", "delta8", "nm", "ecq")
_GAP = 256  # delta8: one byte per gap (1..256); a longer gap is bridged by explicit zero fillers
# nm: group sizes M tried on every sparse tensor of rank 2+ (the N:M patterns accelerators run).
GROUP_SIZES = (4, 8, 2, 16)
MAX_GROUP = 16
_CHUNK = 1 << 20


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


# N:M ("nm"): the tensor viewed as (rows, columns) = (all axes but the last, the last). In every group of M
# consecutive rows of a column at most N values are non-zero; each group stores which N positions it keeps
# as the rank of that combination among the C(M, N) (lexicographic), and the N values in row order. Ranks
# are packed in base C(M, N), `digits_per_word` to a uint64: log2 C(4, 2) = 2.58 bits per group of four
# is stored in 64/24 = 2.67 bits, against 4 for a bitmask.


@functools.lru_cache(maxsize=None)
def nm_tables(n, m):
    """(kept rows of each rank: C x N array, rank of each M-bit keep mask: 2^M array, -1 where not N bits)."""
    combos = np.array(list(itertools.combinations(range(m), n)), dtype=np.int64).reshape(-1, n)
    rank = np.full(1 << m, -1, dtype=np.int64)
    rank[(1 << combos).sum(axis=1)] = np.arange(len(combos))
    return combos, rank


def digits_per_word(choices):
    digits = 1
    while choices ** (digits + 1) <= 1 << 64:
        digits += 1
    return digits


def nm_groups(shape, m):
    """Number of groups of M rows, or None where the rows do not split into them."""
    if len(shape) < 2 or not 1 < m <= MAX_GROUP:
        return None
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    return rows // m * shape[-1] if rows % m == 0 else None


def nm_bytes(shape, pattern, value_itemsize):
    n, m = pattern
    groups = nm_groups(shape, m)
    choices = len(nm_tables(n, m)[0])
    return -(-groups // digits_per_word(choices)) * 8 + groups * n * value_itemsize


def _grouped(array, m):
    """(rows / M, M, columns) view of the (rows, columns) reading."""
    return array.reshape(-1, m, array.shape[-1])


def nm_pattern(array, nnz, value_itemsize, group_sizes=GROUP_SIZES):
    """The smallest N:M reading of `array` (N the most non-zeros any group of M holds), or None when no
    group size gives one below the bitmask."""
    best = None
    for m in sorted(set(group_sizes)):
        if nm_groups(array.shape, m) is None or nnz > array.size * (m - 1) // m:
            continue
        grouped = _grouped(array, m)
        if int(np.count_nonzero(grouped[:64], axis=1).max(initial=0)) == m:
            continue  # a full group among the first rows: no pattern (cheap to find before counting all)
        n = max(1, int(np.count_nonzero(grouped, axis=1).max(initial=0)))
        if n < m:
            size = nm_bytes(array.shape, (n, m), value_itemsize)
            if best is None or size < best[0]:
                best = (size, (n, m))
    return best


def sizes(array, value_dtype, group_sizes=GROUP_SIZES):
    """Exact bytes of every applicable encoding of `array` with values stored as `value_dtype`, the
    non-zero count, and the N:M pattern the nm encoding would use (None where it does not apply)."""
    flat = array.reshape(-1)
    n = flat.size
    nnz = int(np.count_nonzero(flat))
    v = np.dtype(value_dtype).itemsize
    out = {"dense": n * v, "bitmask": -(-n // 8) + nnz * v}
    found = nm_pattern(array, nnz, v, group_sizes) if nnz < n else None
    if found is not None and found[0] < out["bitmask"]:
        out["nm"] = found[0]
    if n:
        out["coo"] = nnz * (narrowest_uint(n - 1).itemsize + v)
    grid = _csr_shape(array.shape)
    if grid and grid[0] and grid[1]:
        out["csr"] = (grid[0] + 1) * narrowest_uint(nnz).itemsize + nnz * (narrowest_uint(grid[1] - 1).itemsize + v)
    # delta8 costs at least one byte per non-zero: only count its fillers when it could win.
    if nnz and nnz * (1 + v) < min(out.values()):
        out["delta8"] = delta8_entries(positions(flat)) * (1 + v)
    return out, nnz, found[1] if "nm" in out else None


def _encode_nm(array, pattern, vd):
    n, m = pattern
    combos, rank = nm_tables(n, m)
    grouped = _grouped(array, m)
    step = max(1, _CHUNK // (m * grouped.shape[2]))  # group rows per chunk: temporaries stay small
    digits, values = [], []
    for start in range(0, grouped.shape[0], step):
        part = np.swapaxes(grouped[start:start + step], 1, 2)  # (group rows, columns, M)
        kept = part != 0
        # A group with fewer than N non-zeros keeps its first zeros too, so that every group keeps exactly N.
        short = n - kept.sum(axis=2, keepdims=True)
        kept |= ~kept & (np.cumsum(~kept, axis=2) <= short)
        digits.append(rank[(kept.astype(np.int64) << np.arange(m)).sum(axis=2)].reshape(-1).astype(np.uint64))
        values.append(part[kept].astype(vd, copy=False))
    digits = np.concatenate(digits)
    per_word = digits_per_word(len(combos))
    padded = np.zeros(-(-digits.size // per_word) * per_word, dtype=np.uint64)
    padded[:digits.size] = digits
    words = np.zeros(padded.size // per_word, dtype=np.uint64)
    base = np.uint64(len(combos))
    for column in padded.reshape(-1, per_word).T[::-1]:  # Horner: the first digit is the lowest
        words = words * base + column
    return {"choice": words, "values": np.concatenate(values)}


def _decode_nm(streams, shape, pattern, out, bad):
    n, m = pattern
    combos, _ = nm_tables(n, m)
    groups = nm_groups(shape, m)
    words, values = streams["choice"], streams["values"]
    if words.dtype != np.uint64:
        raise bad("choice stream is not uint64")
    per_word = digits_per_word(len(combos))
    if words.size != -(-groups // per_word) or values.size != groups * n:
        raise bad("choice and values do not match the N:M groups")
    base, words = np.uint64(len(combos)), words.copy()
    digits = np.empty((words.size, per_word), dtype=np.int64)
    for i in range(per_word):
        digits[:, i] = words % base
        words //= base
    if np.any(words) or np.any(digits.reshape(-1)[groups:]):
        raise bad("a choice word holds more digits than its groups")  # a rank >= C(M, N), or trailing junk
    digits, columns = digits.reshape(-1)[:groups], shape[-1]
    for start in range(0, groups, _CHUNK):  # chunked: the int64 positions stay small
        end = min(start + _CHUNK, groups)
        group_row, column = np.divmod(np.arange(start, end, dtype=np.int64), columns)
        position = ((group_row * m)[:, None] + combos[digits[start:end]]) * columns + column[:, None]
        out[position.reshape(-1)] = values[start * n:end * n]


def encode(array, encoding, value_dtype, pattern=None):
    """The streams of one encoding: name -> flat numpy array (nm needs the (N, M) pattern sizes() found)."""
    flat = array.reshape(-1)
    vd = np.dtype(value_dtype)
    if encoding == "nm":
        return _encode_nm(array, pattern, vd)
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
    "nm": ("choice", "values"),
    "ecq": ("levels",),
}


def check_pattern(pattern, shape):
    """A declared N:M pattern, validated against the shape: (N, M)."""
    if not isinstance(pattern, (list, tuple)) or len(pattern) != 2 or not all(type(x) is int for x in pattern):
        raise WcompressError(f"malformed N:M pattern {pattern!r}")
    n, m = pattern
    if not 0 < n < m <= MAX_GROUP or nm_groups(shape, m) is None:
        raise WcompressError(f"N:M pattern {n}:{m} does not fit shape {tuple(shape)}")
    return n, m


def stream_lengths(encoding, shape, nnz, entries=None, pattern=None):
    """The lengths the streams must have, from the declared shape and counts: checked before reading."""
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if encoding == "nm":
        kept, m = check_pattern(pattern, shape)
        groups = nm_groups(shape, m)
        return {"choice": -(-groups // digits_per_word(len(nm_tables(kept, m)[0]))), "values": groups * kept}
    if encoding == "dense":
        return {"values": n}
    if encoding == "ecq":
        return {"levels": entries}
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


def decode(encoding, streams, shape, dtype, what="tensor", pattern=None, axis=None):
    """Rebuild a dense tensor from validated streams. Any inconsistency is a WcompressError."""
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    dtype = np.dtype(dtype)

    def bad(problem):
        return WcompressError(f"{what}: {problem}")

    if encoding == "ecq":
        from wcompress.formats.container import levels

        long, short, _ = levels.plane_shape(shape, axis)
        try:
            plane = levels.decode(streams["levels"], long, short)
        except ValueError as exc:
            raise bad(str(exc)) from exc
        return levels.from_plane(plane, shape, axis).astype(dtype, copy=False)
    values = streams["values"]
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
    elif encoding == "nm":
        _decode_nm(streams, shape, check_pattern(pattern, shape), out, bad)
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
