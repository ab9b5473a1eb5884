"""What a container is on disk, for both its writer and its reader: the magic, versions, the bounds a reader
holds a file to before it allocates, and the checksummed, xz-compressed metadata blobs (docs/format.md)."""

import lzma
import zlib

import h5py
import numpy as np

from wcompress.formats.h5check import foreign_storage

MAGIC = "wcompress-sparse-container"


# Version 2 adds a CRC-32 of every stored dataset (streams, pools, metadata blobs) and of the index;
# version 3 entropy-codes each stream with the smallest of our coders (codec "auto", io/coders.py).
# version 4 adds the N:M encoding ("nm", with the entry's "pattern": [N, M]); version 5 copies the root
# attributes into the index and names skeleton and raw blobs there, so every byte a reader uses is
# covered by a checksum (see docs/format.md); version 6 adds the ecq encoding (entropy-coded levels, levels.py)
# and is written only by a container holding an ecq tensor, so a reader that predates it says so; version 7
# stores ecq's steps as int16 exponents k of 2^(k/8) instead of float32 steps (version 6 stays readable);
# version 8 adds ecq vectors (biases, batch norms: one step for the tensor, "axis": null) and Exp-Golomb
# coded levels (levels.GOLOMB); version 9 stores HDF5 skeleton files as trees in the index ("skeleton_trees",
# formats/h5tree.py) and ecq's step exponents may be coded as levels (coders.py, coder "levels"): written by
# every ecq container and by any container with a skeleton tree. From version 9 a pooled stream's offset is
# implicit (the pool's streams lie end to end in index order): written, offsets were a ninth of fer's index.
VERSION = 5


ECQ_VERSION = 9


TREE_VERSION = 9


POOL_ORDER_VERSION = 9


READABLE_VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8, 9)



# Root attributes a version-5 index repeats under its checksum (index_crc32 covers the index itself).
COVERED_ATTRIBUTES = ("format", "version", "source_format", "source_name", "codec", "values")


# A crafted file may declare any shape: refuse a tensor that would decode to more than this many
# times the bytes its own streams hold (above a floor), so memory is never allocated on its word.
MAX_EXPANSION = 4096


EXPANSION_FLOOR = 64 * 2**20


# The same bound over the whole container (so many small crafted tensors cannot add up to hours of
# work either), and an absolute cap: no tensor larger than this machine's memory is ever allocated.
TOTAL_EXPANSION_FLOOR = 256 * 2**20


# Metadata blobs (index, graphs, configs) are xz: refuse any that would inflate beyond this ratio.
MAX_METADATA_RATIO = 200


METADATA_FLOOR = 16 * 2**20


# Streams smaller than this share pooled byte datasets: an HDF5 dataset costs hundreds of bytes of
# headers, which would dominate models with many small tensors.
POOL_STREAM_BYTES = 64 * 1024


POOL_FLUSH_BYTES = 4 * 2**20


_INDEX_DTYPES = {"uint8", "uint16", "uint32", "uint64"}


_VALUE_DTYPES = {"float32", "float16", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "uint16",
                 "uint32", "uint64", "bool"}


# How non-zero values are stored: floats as they are or as float16, or quantized (lossy) to symmetric
# integers per output channel (quantization.channel_axis) with a float32 scale per channel: int4 codes lie in -7..7,
# one per int8 element, which the coders pack to their entropy (at most 4 bits).
# ecq (written ecq:QP): levels of any step per channel, context-coded (quantization.py, levels.py).
VALUE_CHOICES = ("float32", "float16", "int8", "int4", "ecq")


QUANT_LEVELS = {"int8": 127, "int4": 7}  # see wcompress/formats/container/quantization.py


def write_attributes(h5, attributes):
    """Root attributes, strings as fixed-length UTF-8: a variable-length string lives in a global heap, whose
    smallest collection is 4 KiB, a third of a small model's container."""
    for key, value in attributes.items():
        if isinstance(value, str):
            data = value.encode()
            h5.attrs.create(key, np.array(data, dtype=h5py.string_dtype("utf-8", max(1, len(data)))))
        else:
            h5.attrs[key] = value


def read_attributes(h5):
    """The root attributes with strings as str, whether stored fixed-length (ours since ecq) or variable-length."""
    out = {}
    for key, value in h5.attrs.items():
        if isinstance(value, (bytes, np.bytes_)):
            try:
                value = bytes(value).decode()
            except UnicodeDecodeError as exc:
                raise ValueError(f"attribute {key} is not UTF-8 text") from exc
        out[key] = value
    return out


def pooled_bytes(ref):
    """Bytes a pooled stream occupies in its pool: its coded size, or its elements' raw size (no coder)."""
    return ref["bytes"] if "coder" in ref else ref["count"] * np.dtype(str(ref["dtype"])).itemsize


def _fits(decoded, stored):
    """Whether a reader accepts a tensor of `decoded` bytes from `stored` bytes of streams (see _validate)."""
    return decoded <= max(EXPANSION_FLOOR, MAX_EXPANSION * stored)


def _unzipped(dataset, checksum=None):
    """Decompress a metadata blob, checking its checksum first and bounding what it may inflate to."""
    if not isinstance(dataset, h5py.Dataset) or dataset.shape is None or dataset.dtype != np.uint8 \
            or dataset.ndim != 1:
        raise ValueError(f"metadata blob {getattr(dataset, 'name', '?')} is not a byte dataset")
    if foreign_storage(dataset):
        raise ValueError(f"metadata blob {dataset.name} {foreign_storage(dataset)}")
    if dataset.id.get_storage_size() < dataset.shape[0]:  # we write blobs contiguous and uncompressed
        raise ValueError(f"metadata blob {dataset.name} declares {dataset.shape[0]:,} bytes but the file holds "
                         f"{dataset.id.get_storage_size():,}")
    data = dataset[()].tobytes()
    if checksum is not None and zlib.crc32(data) != int(checksum):
        raise ValueError(f"checksum mismatch in metadata blob {dataset.name}")
    limit = max(METADATA_FLOOR, MAX_METADATA_RATIO * len(data))
    try:
        unpacker = lzma.LZMADecompressor()
        out = unpacker.decompress(data, max_length=limit + 1)
    except lzma.LZMAError as exc:
        raise ValueError(f"damaged metadata blob {dataset.name}") from exc
    if len(out) > limit or not unpacker.eof:
        raise ValueError(f"metadata blob {dataset.name} is truncated or inflates beyond {limit:,} bytes")
    return out


def _crc(array):
    return zlib.crc32(np.ascontiguousarray(array).view(np.uint8))
