"""Entropy coders for container streams, chosen per stream by the bytes they produce.

A pruned tensor is a mask and a stream of values; stored raw, each costs its full width (1 bit per
weight, 16 or 32 bits per value), well above what the content holds: a 75%-sparse mask carries 0.81
bits per weight, and trained weights use few of float16's 65,536 codes, unevenly. Measured on real
models (docs/format.md), pcodec on the value streams and zstd on the packed mask land at the
order-0 entropy of the content (below it where layers have structure, e.g. whole channels pruned).

- `raw`: the stream's bytes as they are.
- `zstd`: zstd (level 19; 9 for streams over 1 MiB, where 19 runs at ~2 MB/s), bytes of multi-byte elements
  shuffled into planes first (all high bytes, then all low bytes: the sign and exponent bytes of
  floats and the high bytes of indices are the compressible ones).
- `pcodec`: pcodec's standalone format, for 16/32/64-bit numbers (values, wide indices; bfloat16 values
  as their uint16 bit patterns).
- `levels` (version 9): a 16/32-bit signed integer stream as a levels blob (levels.py: context-modelled
  range coding or Exp-Golomb codes around the median, the smaller). Tried on ecq's step exponents, a few
  hundred integers within a few octaves of each other: ~4 bits each where pcodec spends ~7 and raw 16.

Every decoder is told the element count and dtype the index declared (already checked against
the tensor's shape), allocates exactly that, and treats any mismatch as a damaged stream.
"""

import numpy as np

from wcompress.errors import WcompressError
from wcompress.formats.dtypes import BFLOAT16

CODERS = ("raw", "zstd", "pcodec", "levels")
LEVELS_CODER_VERSION = 9
_LEVELS_DTYPES = {"int16", "int32"}
# The container's --codec: auto (these coders, per stream), none (raw), or an HDF5 filter over raw streams.
CODECS = ("auto", "none", "gzip", "lzf", "zstd")


def available_codecs():
    """What `--codec` may offer here: zstd as an HDF5 filter only where hdf5plugin is installed."""
    import importlib.util

    return tuple(c for c in CODECS if c != "zstd" or importlib.util.find_spec("hdf5plugin") is not None)
_PCODEC_DTYPES = {"float16", "float32", "float64", "int16", "int32", "int64", "uint16", "uint32", "uint64"}
ZSTD_LEVEL, ZSTD_FAST_LEVEL, ZSTD_FAST_ABOVE = 19, 9, 2**20
SAMPLE_ABOVE, SAMPLE_BYTES = 2**20, 256 * 2**10


def _shuffled(array):
    if array.dtype.itemsize == 1:
        return np.ascontiguousarray(array).view(np.uint8)
    return np.ascontiguousarray(array.view(np.uint8).reshape(-1, array.dtype.itemsize).T).reshape(-1)


def _unshuffled(data, dtype, count):
    if dtype.itemsize == 1:
        return data.view(dtype)
    return np.ascontiguousarray(data.reshape(dtype.itemsize, count).T).reshape(-1).view(dtype)


def encode(array, coder, coded_as=None):
    """The stored bytes of a 1-D array under `coder`, as a uint8 array (`coded_as`: the bytes of the
    stream this array is a sample of, so that it is coded with the same settings)."""
    array = np.ascontiguousarray(array).reshape(-1)
    if coder == "raw":
        return array.view(np.uint8)
    if coder == "zstd":
        import zstandard

        data = _shuffled(array)
        level = ZSTD_LEVEL if (coded_as or data.nbytes) <= ZSTD_FAST_ABOVE else ZSTD_FAST_LEVEL
        packed = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data.tobytes())
        return np.frombuffer(packed, dtype=np.uint8)
    if coder == "pcodec":
        from pcodec import ChunkConfig, standalone

        return np.frombuffer(standalone.simple_compress(_pcodec_view(array), ChunkConfig()), dtype=np.uint8)
    if coder == "levels":
        from wcompress.formats.container import levels

        return levels.encode(array.reshape(-1, 1))
    raise WcompressError(f"unknown stream coder {coder!r}")


def _pcodec_view(array):
    """pcodec has no bfloat16: its bit patterns as uint16 code within 1% of their order-0 entropy (a
    bfloat16 weight stream holds ~0.65 of its raw bytes), as close as float16 values code."""
    return array.view(np.uint16) if array.dtype == BFLOAT16 else array


def applicable(array):
    """Coders worth trying on this stream, cheapest to decode first (ties go to the earlier)."""
    if array.nbytes < 64:
        return ["raw"]
    coders = ["raw", "zstd"]
    if str(array.dtype) in _PCODEC_DTYPES or array.dtype == BFLOAT16:
        coders.append("pcodec")
    return coders


def levels_codable(array):
    """Whether the `levels` coder takes this stream: signed 16/32-bit integers inside the levels' bound."""
    from wcompress.formats.container.levels import MAX_LEVEL

    if str(array.dtype) not in _LEVELS_DTYPES:
        return False
    return not array.size or int(np.abs(array.astype(np.int64)).max()) < MAX_LEVEL


def smallest(array, also=()):
    """(coder, stored bytes) of the smallest encoding of this stream, trying the coders in `also` too
    (ecq's step exponents: `levels`). A stream over SAMPLE_ABOVE bytes is
    coded in full only by the coder that makes the smallest of a SAMPLE_BYTES slice from its middle
    (pcodec codes ~50 MB/s, zstd 19 ~2 MB/s: trying every coder on every byte doubled `pack`)."""
    array = np.ascontiguousarray(array).reshape(-1)
    candidates = applicable(array) + [c for c in also if c != "levels" or levels_codable(array)]
    if array.nbytes > SAMPLE_ABOVE and len(candidates) > 1:
        count = SAMPLE_BYTES // array.dtype.itemsize
        start = (array.size - count) // 2
        sample = array[start:start + count]
        candidates = [min(candidates, key=lambda coder: (encode(sample, coder, coded_as=array.nbytes).nbytes,
                                                         candidates.index(coder)))]
    best = None
    for coder in candidates:
        data = encode(array, coder)
        if best is None or data.nbytes < best[1].nbytes:
            best = (coder, data)
    return best


def decode(coder, data, dtype, count):
    """`count` elements of `dtype` from stored bytes `data` (uint8 array); ValueError when damaged."""
    dtype = np.dtype(dtype)
    expected = count * dtype.itemsize
    if coder == "raw":
        if data.nbytes != expected:
            raise ValueError(f"raw stream holds {data.nbytes} bytes, {expected} expected")
        return data.view(dtype)
    if coder == "zstd":
        import zstandard

        raw = data.tobytes()
        try:
            declared = zstandard.frame_content_size(raw)
        except zstandard.ZstdError as exc:
            raise ValueError(f"damaged zstd stream ({exc})") from exc
        if declared != expected:
            raise ValueError(f"zstd stream declares {declared} bytes, {expected} expected")
        try:
            out = zstandard.ZstdDecompressor().decompress(raw, max_output_size=expected)
        except zstandard.ZstdError as exc:
            raise ValueError(f"damaged zstd stream ({exc})") from exc
        if len(out) != expected:
            raise ValueError(f"zstd stream decoded to {len(out)} bytes, {expected} expected")
        return _unshuffled(np.frombuffer(out, dtype=np.uint8), dtype, count)
    if coder == "pcodec":
        from pcodec import standalone

        if str(dtype) not in _PCODEC_DTYPES and dtype != BFLOAT16:
            raise ValueError(f"pcodec stream of dtype {dtype}")
        out = np.empty(count, dtype=dtype)
        try:
            progress = standalone.simple_decompress_into(data.tobytes(), _pcodec_view(out))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a Rust panic arrives as pyo3's PanicException, a BaseException
            raise ValueError(f"damaged pcodec stream ({str(exc).splitlines()[0] if str(exc) else exc})") from exc
        if progress.n_processed != count or not progress.finished:
            raise ValueError(f"pcodec stream holds {progress.n_processed} values, {count} expected")
        return out
    if coder == "levels":
        from wcompress.formats.container import levels

        if str(dtype) not in _LEVELS_DTYPES:
            raise ValueError(f"levels stream of dtype {dtype}")
        out = levels.decode(data, count, 1).reshape(-1)
        info = np.iinfo(dtype)
        if out.size and (int(out.min()) < info.min or int(out.max()) > info.max):
            raise ValueError(f"levels stream holds values beyond {dtype}")
        return out.astype(dtype)
    raise ValueError(f"unknown stream coder {coder!r}")
