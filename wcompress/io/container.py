"""The wcompress sparse container: one HDF5 file holding every tensor in its smallest encoding and
everything else needed to rebuild the original model (see docs/format.md)."""

import json
import lzma
import os
import shutil
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

from ..errors import WcompressError, warn
from ..quantization import channel_axis, dequantize, quantizable, quantize, quantize_calibrated
from . import coders, encodings
from .coders import CODECS
from .h5check import check_structure, foreign_storage
from .h5util import NO_TIMES, create_file, create_group
from .store import ModelStore
from .tensors import TensorInfo

MAGIC = "wcompress-sparse-container"
# Version 2 adds a CRC-32 of every stored dataset (streams, pools, metadata blobs) and of the index;
# version 3 entropy-codes each stream with the smallest of our coders (codec "auto", io/coders.py).
# version 4 adds the N:M encoding ("nm", with the entry's "pattern": [N, M]); version 5 copies the root
# attributes into the index and names skeleton and raw blobs there, so every byte a reader uses is
# covered by a checksum (see docs/format.md).
VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
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


def _stream_options(codec, array):
    if codec in ("none", "auto") or array.size < 1024:
        return {}
    if codec == "zstd":
        try:
            import hdf5plugin
        except ImportError as exc:
            raise WcompressError("--codec zstd needs the hdf5plugin package (pip install hdf5plugin)") from exc
        return dict(hdf5plugin.Zstd(clevel=9), chunks=True)
    return {"compression": codec, "shuffle": True, "chunks": True}


# How non-zero values are stored: floats as they are or as float16, or quantized (lossy) to symmetric
# integers per output channel (quantization.channel_axis) with a float32 scale per channel: int4 codes lie in -7..7,
# one per int8 element, which the coders pack to their entropy (at most 4 bits).
VALUE_CHOICES = ("float32", "float16", "int8", "int4")
QUANT_LEVELS = {"int8": 127, "int4": 7}  # see wcompress/quantization.py


def _fits(decoded, stored):
    """Whether a reader accepts a tensor of `decoded` bytes from `stored` bytes of streams (see _validate)."""
    return decoded <= max(EXPANSION_FLOOR, MAX_EXPANSION * stored)


def _max_finite_abs(array, chunk=1 << 20):
    """Largest finite |w|, in chunks so no full-size temporary is made."""
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if np.isfinite(low) and np.isfinite(high):  # the common case: two passes, no temporaries
        return max(abs(low), abs(high))
    flat, top = array.reshape(-1), 0.0
    for start in range(0, flat.size, chunk):
        part = np.abs(flat[start:start + chunk])
        part = part[np.isfinite(part)]
        if part.size:
            top = max(top, float(part.max()))
    return top


def _zipped(data):
    """Metadata blobs (index, graphs, configs) are xz-compressed by us and stored contiguous: an HDF5
    compression filter would add chunk-index overhead bigger than many small models, and xz packs
    protobuf graphs about twice as tight as zlib."""
    preset = 9 | lzma.PRESET_EXTREME if len(data) < 16 * 2**20 else 6
    return np.frombuffer(lzma.compress(data, preset=preset), dtype=np.uint8)


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


def _memory_bytes():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every platform says
        return 2**40


class ContainerWriter:
    """Writes tensors one at a time, each in its smallest encoding; the index and skeleton at the end."""

    def __init__(self, store, values="float32", codec="auto", hessians=None, value_plan=None, group_sizes=()):
        """`hessians` ({tensor name: X^T X / n of its layer's inputs}, io/capture.py) make int8/int4 codes
        compensate their rounding error GPTQ-style; other tensors are rounded to nearest. `value_plan`
        ({tensor name: values}) stores those tensors' values otherwise than `values` (autotune's per-layer
        widths). `group_sizes`: N:M group sizes M to try besides encodings.GROUP_SIZES (sparsify --pattern's)."""
        if codec not in CODECS:
            raise WcompressError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
        self.value_plan = dict(value_plan or {})
        for chosen in {values, *self.value_plan.values()}:
            if chosen not in VALUE_CHOICES:
                raise WcompressError(f"--values takes {', '.join(VALUE_CHOICES)}, not {chosen!r}")
        if hessians and not {values, *self.value_plan.values()} & set(QUANT_LEVELS):
            raise WcompressError("calibration data is for --values int8 or int4")
        self.store, self.values, self.codec, self.hessians = store, values, codec, hessians or {}
        self.group_sizes = tuple(sorted(set(encodings.GROUP_SIZES) | set(group_sizes)))

    def __call__(self, target, produce):
        entries, kept, retyped = [], [], {}
        with create_file(target) as h5:
            name = os.path.basename(getattr(self.store, "prefix", "") if self.store.format.endswith("checkpoint")
                                    else os.path.normpath(self.store.path))
            attributes = dict(format=MAGIC, version=VERSION, source_format=self.store.format, source_name=name,
                              codec=self.codec, values=self.values)
            h5.attrs.update(attributes)
            streams = create_group(h5, "streams")
            self._pool, self._pool_bytes, self._pools, self._checksums = [], 0, 0, {}
            # Coding a tensor's streams (pcodec, zstd: both release the GIL) runs in a worker while the next
            # tensor is read and thresholded here; at most one tensor's streams wait, never a whole array.
            with ThreadPoolExecutor(max_workers=1) as coder:
                pending = None
                for info in self.store.tensors:
                    array = produce(info)
                    if array is None:
                        continue
                    kept.append(info.name)
                    if array.dtype != info.dtype:
                        retyped[info.name] = array.dtype
                    prepared = self._prepare(info, array)
                    del array
                    if pending is not None:
                        entries.append(self._store(streams, len(entries), *pending.result()))
                    pending = coder.submit(self._code, prepared)
                if pending is not None:
                    entries.append(self._store(streams, len(entries), *pending.result()))
            self._flush_pool(streams)
            with tempfile.TemporaryDirectory() as work:
                files, raw = self.store.skeleton(kept, retyped, work)
            # What each blob is (a skeleton file's path, a raw entry's key) is recorded in the index only.
            blob_names = {}
            skeleton = create_group(h5, "skeleton") if files else None
            for n, (rel, data) in enumerate(sorted(files.items())):
                packed = _zipped(data)
                skeleton.create_dataset(str(n), data=packed, **NO_TIMES)
                self._checksums[f"skeleton/{n}"] = _crc(packed)
                blob_names[f"skeleton/{n}"] = rel
            blobs = create_group(h5, "raw") if raw else None
            for n, key in enumerate(sorted(raw)):
                packed = _zipped(raw[key])
                blobs.create_dataset(str(n), data=packed, **NO_TIMES)
                self._checksums[f"raw/{n}"] = _crc(packed)
                blob_names[f"raw/{n}"] = key
            document = {"tensors": entries, "checksums": self._checksums, "attributes": attributes,
                        "blobs": blob_names}
            index = _zipped(json.dumps(document, separators=(",", ":")).encode())
            h5.create_dataset("index", data=index, **NO_TIMES)
            h5.attrs["index_crc32"] = _crc(index)
        return [target]

    def _flush_pool(self, group):
        if self._pool:
            pool = np.concatenate(self._pool)
            group.create_dataset(f"pool{self._pools}", data=pool, **NO_TIMES)
            self._checksums[f"streams/pool{self._pools}"] = _crc(pool)
        self._pool, self._pool_bytes, self._pools = [], 0, self._pools + (1 if self._pool else 0)

    def _value_dtype(self, array, values):
        if values == "float16" and array.dtype in (np.float32, np.float64):
            if _max_finite_abs(array) > float(np.finfo(np.float16).max):
                return array.dtype, True  # would overflow: keep full precision for this tensor
            return np.dtype(np.float16), False
        return array.dtype, False

    def _prepare(self, info, array):
        """Everything the coder needs from the array: the raw streams of the smallest raw encoding and,
        with codec auto, of the encodings competing once coded. The array itself is not kept."""
        quantized, scale = None, None
        values = self.value_plan.get(info.name, self.values)
        if values in QUANT_LEVELS and quantizable(array):
            quantized = {"bits": 8 if values == "int8" else 4, "axis": channel_axis(array.shape)}
            original = array
            calibrated = quantize_calibrated(array, self.hessians.get(info.name), QUANT_LEVELS[values])
            if calibrated is not None:
                quantized["calibrated"] = True
            array, scale = calibrated or quantize(array, QUANT_LEVELS[values])
        value_dtype, overflow = self._value_dtype(array, values)
        if array.dtype == object or array.ndim == 0:
            candidates, nnz, pattern = {"dense": array.nbytes}, int(np.count_nonzero(array)), None
        else:
            candidates, nnz, pattern = encodings.sizes(array, value_dtype, self.group_sizes)
        # Only encodings a reader accepts (see _fits): an all-zero tensor would otherwise store nothing.
        fitting = {k: v for k, v in candidates.items() if _fits(array.nbytes, v)} or candidates
        encoding = min(fitting, key=lambda k: (fitting[k], encodings.ENCODINGS.index(k)))
        options = {encoding: encodings.encode(array, encoding, value_dtype, pattern)}
        if self.codec == "auto" and array.dtype != object:
            # A mask and position gaps carry the same information: only bitmask (any density) and delta8
            # (sparse: its coded gaps then beat a coded mask) compete with dense; coo and csr spend more
            # bits per position than either once coded.
            flat_size = array.size
            # An N:M pattern's choice words compete too: denser than a coded mask when the groups are full.
            for other in ({"dense"} if nnz == flat_size or array.ndim == 0 else {"bitmask"}) | \
                    ({"delta8"} if 0 < nnz < flat_size // 8 else set()) | ({"nm"} if pattern else set()):
                if other not in options:
                    options[other] = encodings.encode(array, other, value_dtype, pattern)
        entry = {
            "name": info.name, "shape": list(array.shape), "dtype": str(array.dtype), "layer": info.layer,
            "role": info.role, "order": info.order, "nnz": nnz, "value_dtype": str(np.dtype(value_dtype)),
            "fp16_overflow": overflow,
        }
        if pattern:
            entry["pattern"] = list(pattern)  # kept only when nm is the encoding stored (see _store)
        decoded = array.nbytes
        if quantized is not None:
            entry.update(dtype=str(original.dtype), quantized=quantized)
            decoded = original.nbytes
            for streams in options.values():
                streams["scales"] = scale
        return entry, encoding, options, decoded, array.dtype != object

    def _code(self, prepared):
        """(entry, encoding, streams, {stream: (coder, stored bytes)} or None): with codec auto, the
        encoding whose streams are fewest bytes once each is coded by its smallest coder."""
        entry, raw_encoding, options, decoded, numeric = prepared
        raw_streams = options[raw_encoding]
        if self.codec != "auto" or not numeric:
            return entry, raw_encoding, raw_streams, None
        best = None
        for encoding in sorted(options, key=encodings.ENCODINGS.index):
            coded = {name: coders.smallest(data) for name, data in options[encoding].items()}
            total = sum(stored.nbytes for _, stored in coded.values())
            if best is None or total < best[0]:
                best = (total, encoding, coded)
        total, encoding, coded = best
        raw_total = sum(np.asarray(d).nbytes for d in raw_streams.values())
        # A huge all-zero tensor would code to almost nothing, which a reader refuses: raw streams then.
        if not _fits(decoded, total) or raw_total <= total:
            return entry, raw_encoding, raw_streams, {name: ("raw", coders.encode(d, "raw"))
                                                      for name, d in raw_streams.items()}
        return entry, encoding, options[encoding], coded

    def _store(self, group, number, entry, encoding, streams, coded):
        names = {}
        for stream, data in streams.items():
            data = np.ascontiguousarray(data)
            if coded is not None:
                coder, stored = coded[stream]
                ref = {"coder": coder, "bytes": int(stored.nbytes), "count": int(data.size), "dtype": str(data.dtype)}
                data = stored
            else:
                ref = {"count": int(data.size), "dtype": str(data.dtype)}
            if data.nbytes < POOL_STREAM_BYTES and self.codec in ("none", "auto"):
                names[stream] = {"pool": f"pool{self._pools}", "offset": self._pool_bytes, **ref}
                self._pool.append(data.view(np.uint8).reshape(-1))
                self._pool_bytes += data.nbytes
                if self._pool_bytes >= POOL_FLUSH_BYTES:
                    self._flush_pool(group)
            else:
                name = f"{number}.{stream}"
                options = _stream_options(self.codec, data) if coded is None else {}
                group.create_dataset(name, data=data, **options, **NO_TIMES)
                self._checksums[f"streams/{name}"] = _crc(data)
                names[stream] = {"dataset": name, **ref}
        if encoding != "nm":
            entry = {k: v for k, v in entry.items() if k != "pattern"}
        return {**entry, "encoding": encoding, "streams": names, "entries": int(streams["values"].size)}


class ContainerStore(ModelStore):
    """Reads a container: the tensor index (validated), and one decoded tensor at a time."""

    format = "wcompress-container"

    def __init__(self, path):
        super().__init__(path)
        self.file_bytes = os.path.getsize(path)
        check_structure(path)
        try:
            self.h5 = h5py.File(path, "r")
            attrs = dict(self.h5.attrs)
            if attrs.get("format") != MAGIC:
                raise WcompressError("not a wcompress container (an HDF5 file without the container's mark)", path)
            self.version = int(attrs.get("version", 0))
            if self.version not in READABLE_VERSIONS:
                raise WcompressError(f"container version {attrs.get('version')} is not supported (this wcompress "
                                     f"reads {', '.join(map(str, READABLE_VERSIONS))})", path)
            self.checksums = self.version >= 2
            index_crc = None
            if self.checksums:
                if "index_crc32" not in attrs:
                    raise ValueError("index checksum missing")
                index_crc = int(attrs["index_crc32"])
            index = json.loads(_unzipped(self.h5["index"], index_crc).decode())
            if not isinstance(index, dict) or not isinstance(index.get("tensors", []), list):
                raise ValueError("index is not a tensor list")
            self._checksums = index.get("checksums", {}) if self.checksums else None
            if self.checksums and not isinstance(self._checksums, dict):
                raise ValueError("checksum table missing")
            self._blob_names = self._covered_attributes(attrs, index)
            self._verified = set()
        except WcompressError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, RecursionError) as exc:
            raise WcompressError(f"damaged container ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                                 path) from exc
        self.source_format = str(attrs["source_format"])
        self.source_name = str(attrs.get("source_name", "model"))
        self.codec = str(attrs.get("codec", "none"))
        self.entries = {}
        decoded_total = 0
        for entry in index.get("tensors", []):
            decoded_total += self._validate(entry)
            if entry["name"] in self.entries:
                raise WcompressError(f"tensor {entry['name']!r} is listed twice", path)
            self.entries[entry["name"]] = entry
        if decoded_total > max(TOTAL_EXPANSION_FLOOR, MAX_EXPANSION * self.file_bytes):
            raise WcompressError(f"tensors declared to decode to {decoded_total:,} bytes in all, from a "
                                 f"{self.file_bytes:,}-byte file: damaged or crafted", path)
        self.tensors = [
            TensorInfo(name=e["name"], shape=tuple(e["shape"]), dtype=np.dtype(e["dtype"]), layer=e["layer"],
                       role=e["role"], order=e["order"]) for e in self.entries.values()
        ]
        self.raw = {}
        try:
            self._all_blobs_present("raw", self.h5.get("raw", {}))
            for ds in self.h5.get("raw", {}).values():
                self.raw[self._blob_name(ds, "key")] = ds
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
            raise WcompressError(f"damaged container (raw blobs: {exc})", path) from exc

    def _covered_attributes(self, attrs, index):
        """Version 5: the root attributes must equal the index's checksummed copy (a changed source_format
        would restore another format's files); returns the blob names the index records (None before 5)."""
        if self.version < 5 and "attributes" not in index:
            if self.version == 1:
                warn("container version 1 carries no checksums: damage to it cannot be detected", self.path)
            return None
        recorded = index.get("attributes")
        if not isinstance(recorded, dict) or not isinstance(index.get("blobs"), dict):
            raise ValueError("index without the checksummed attributes of a version-5 container")
        for key in COVERED_ATTRIBUTES:
            value = attrs.get(key)
            value = value.item() if isinstance(value, np.generic) else value
            if key not in recorded or value != recorded[key] or type(value) is not type(recorded[key]):
                raise ValueError(f"attribute {key} ({value!r}) differs from the checksummed index "
                                 f"({recorded.get(key)!r})")
        return index["blobs"]

    def _all_blobs_present(self, group, members):
        """Every skeleton file or raw entry the checksum table records must be there: one deleted from the
        file would otherwise be silently missing from the restored model."""
        if self.checksums:
            recorded = {k for k in self._checksums if k.startswith(group + "/")}
            present = {f"{group}/{name}" for name in members}
            if recorded != present:
                missing = sorted(recorded - present) or sorted(present - recorded)
                raise WcompressError(f"damaged container: {group} blobs differ from the index ({missing[0]})",
                                     self.path)

    def _blob_name(self, ds, attribute):
        """What a skeleton (`path`) or raw (`key`) blob is: from the index in version 5, else its attribute."""
        if self._blob_names is None:
            return str(ds.attrs[attribute])
        name = self._blob_names.get(ds.name.lstrip("/"))
        if not isinstance(name, str):
            raise ValueError(f"blob {ds.name} is not named in the index")
        return name

    def _checksum(self, key):
        """The checksum a version-2 file records for dataset `key` (None for version 1, which has none)."""
        if not self.checksums:
            return None
        if not isinstance(self._checksums.get(key), int):
            raise ValueError(f"no checksum recorded for {key}")
        return self._checksums[key]

    def _verify(self, key, array):
        """Compare a dataset's bytes, read in full, with its recorded checksum (once per dataset)."""
        if self.checksums and key not in self._verified:
            if _crc(array) != self._checksum(key):
                raise WcompressError(f"damaged container: checksum mismatch in {key}", self.path)
            self._verified.add(key)

    def _validate(self, e):
        """Check declared shapes, counts and stream lengths against each other before reading data;
        return the tensor's decoded size in bytes."""
        try:
            if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not e["name"].strip():
                raise ValueError("entry without a tensor name")
            if not isinstance(e["shape"], list) or len(e["shape"]) > 32 or not isinstance(e["streams"], dict):
                raise ValueError("malformed entry")
            shape = tuple(int(d) for d in e["shape"])
            if any(d < 0 for d in shape):
                raise ValueError("negative dimension")
            n = int(np.prod([float(d) for d in shape])) if shape else 1  # float: no silent int64 overflow
            if str(e["dtype"]) not in _VALUE_DTYPES or str(e["value_dtype"]) not in _VALUE_DTYPES:
                raise ValueError(f"dtype {e['dtype']}/{e['value_dtype']} not allowed")
            nnz, entries = int(e["nnz"]), int(e["entries"])
            if not 0 <= nnz <= n or entries < nnz:
                raise ValueError(f"non-zero count {nnz} impossible for {n} elements")
            expected = encodings.stream_lengths(e["encoding"], shape, nnz, entries, e.get("pattern"))
            quantized = e.get("quantized")
            if quantized is not None:
                if not isinstance(quantized, dict) or quantized.get("bits") not in (4, 8) or len(shape) < 2 \
                        or quantized.get("axis") not in (len(shape) - 1, len(shape) - 2) \
                        or str(e["value_dtype"]) != "int8" or np.dtype(str(e["dtype"])).kind != "f":
                    raise ValueError(f"malformed quantization {quantized!r}")
                expected["scales"] = shape[quantized["axis"]]
            if set(expected) != set(e["streams"]):
                raise ValueError(f"streams {sorted(e['streams'])} do not match encoding {e['encoding']}")
            stored = 0
            for stream, length in expected.items():
                ref = e["streams"][stream]
                dtype = str(ref["dtype"])
                allowed = {str(e["value_dtype"])} if stream == "values" else {"float32"} if stream == "scales" \
                    else _INDEX_DTYPES
                if dtype not in allowed:
                    raise ValueError(f"stream {stream} has dtype {dtype}, expected {' or '.join(sorted(allowed))}")
                if int(ref["count"]) != length:
                    raise ValueError(f"stream {stream} holds {ref['count']} entries, expected {length}")
                coder = ref.get("coder")
                if coder is None:  # versions 1 and 2, and --codec none or an HDF5 filter: raw elements
                    nbytes = length * np.dtype(dtype).itemsize
                else:
                    if coder not in coders.CODERS or not isinstance(ref.get("bytes"), int) or ref["bytes"] < 0:
                        raise ValueError(f"stream {stream}: unknown coder {coder!r} or stored size")
                    nbytes = ref["bytes"]
                    if coder == "raw" and nbytes != length * np.dtype(dtype).itemsize:
                        raise ValueError(f"raw stream {stream} holds {nbytes} bytes, expected "
                                         f"{length * np.dtype(dtype).itemsize}")
                stored += nbytes
                where = "streams/" + str(ref["pool"] if "pool" in ref else ref["dataset"])
                self._checksum(where)  # a version-2 file records one for every dataset
                ds = self.h5["streams"][str(ref["pool"] if "pool" in ref else ref["dataset"])]
                if not isinstance(ds, h5py.Dataset) or ds.shape is None or len(ds.shape) != 1:
                    raise ValueError(f"stream {stream} is not a 1-D dataset")
                if foreign_storage(ds):
                    raise ValueError(f"stream {stream} {foreign_storage(ds)}")
                if "pool" in ref:
                    end = int(ref["offset"]) + nbytes
                    if ds.dtype != np.uint8 or int(ref["offset"]) < 0 or end > ds.shape[0]:
                        raise ValueError(f"stream {stream} lies outside its pool")
                elif coder is not None and (ds.shape[0] != nbytes or ds.dtype != np.uint8):
                    raise ValueError(f"stream {stream} holds {ds.shape} {ds.dtype}, expected {nbytes} bytes")
                elif coder is None and (ds.shape[0] != length or str(ds.dtype) != dtype):
                    raise ValueError(f"stream {stream} holds {ds.shape} {ds.dtype}, expected {length} {dtype}")
                held = ds.id.get_storage_size()
                logical = ds.size * ds.dtype.itemsize
                if (ds.compression is None and held < logical) or held * MAX_EXPANSION < logical:
                    raise ValueError(f"stream {stream} is truncated")
            decoded = n * np.dtype(e["dtype"]).itemsize
            if not _fits(decoded, stored):
                raise ValueError(f"declared shape {shape} would decode to {decoded:,} bytes from {stored:,} stored")
            if decoded > _memory_bytes():
                raise ValueError(f"declared shape {shape} would decode to {decoded:,} bytes, more than this "
                                 "machine's memory")
            return decoded
        except (KeyError, ValueError, TypeError, OverflowError, RuntimeError, OSError, AttributeError,
                WcompressError) as exc:
            raise WcompressError(f"tensor {e.get('name', '?')!r}: {exc}", self.path) from exc

    def load(self, name):
        """The tensor as the model holds it (quantized values dequantized: codes x channel scale)."""
        codes, scales = self._decode(name)
        e = self.entries[name]
        return codes if scales is None else dequantize(codes, scales, np.dtype(e["dtype"]), e["quantized"]["axis"])

    def load_stored(self, name):
        """The tensor's values as stored: float16 values, or a quantized tensor's integer codes."""
        codes, scales = self._decode(name, stored=True)
        return codes

    def _decode(self, name, stored=False):
        e = self.entries[name]
        try:
            streams = {s: self._read_stream(ref) for s, ref in e["streams"].items()}
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise WcompressError(f"cannot read tensor {name!r} ({str(exc).splitlines()[0]})", self.path) from exc
        scales = streams.pop("scales", None) if e.get("quantized") else None
        dtype = e["value_dtype"] if stored or scales is not None else e["dtype"]
        codes = encodings.decode(e["encoding"], streams, tuple(e["shape"]), dtype, what=f"{self.path}: {name!r}",
                                 pattern=e.get("pattern"))
        return codes, scales

    def _read_stream(self, ref):
        dtype = np.dtype(str(ref["dtype"]))
        coder = ref.get("coder")
        if "pool" in ref:
            pool = self.h5["streams"][str(ref["pool"])]
            key = "streams/" + str(ref["pool"])
            if self.checksums and key not in self._verified:
                self._verify(key, pool[()])  # pools are small (a few MB): checked whole, once
            start = int(ref["offset"])
            nbytes = int(ref["count"]) * dtype.itemsize if coder is None else int(ref["bytes"])
            data = pool[start:start + nbytes]
            return data.view(dtype) if coder is None else coders.decode(coder, data, dtype, int(ref["count"]))
        data = self.h5["streams"][str(ref["dataset"])][()]
        self._verify("streams/" + str(ref["dataset"]), data)
        return data if coder is None else coders.decode(coder, data, dtype, int(ref["count"]))

    def stored_bytes(self, name):
        """Bytes the tensor's streams occupy in the file (after any codec; pooled streams: their slice)."""
        total = 0
        for ref in self.entries[name]["streams"].values():
            if "pool" in ref:
                total += int(ref["count"]) * np.dtype(str(ref["dtype"])).itemsize if "coder" not in ref \
                    else int(ref["bytes"])
            else:
                total += int(self.h5["streams"][str(ref["dataset"])].id.get_storage_size())
        return total

    def files(self):
        return [self.path]

    read_only = ("a container is read-only here: `wcompress restore` it first, or write a new one with `pack` / "
                 "`sparsify --pack`")

    def write(self, target, produce):
        raise WcompressError(self.read_only, self.path)

    # The reader interface CheckpointStore expects, so the original store can be rebuilt on top of it.
    @property
    def shapes(self):
        shapes = {t.name: t.shape for t in self.tensors}
        shapes.update({k: () for k in self.raw})
        return shapes

    @property
    def dtypes(self):
        dtypes = {t.name: t.dtype for t in self.tensors}
        dtypes.update({k: np.dtype(object) for k in self.raw})
        return dtypes

    def get(self, key):
        if key in self.raw:
            ds = self.raw[key]
            try:
                data = _unzipped(ds, self._checksum("raw/" + ds.name.split("/")[-1]))
            except (OSError, KeyError, ValueError, RuntimeError) as exc:
                raise WcompressError(f"damaged container ({exc})", self.path) from exc
            value = np.empty((), dtype=object)
            value[()] = data
            return value
        return self.load(key)

    def original(self, workdir):
        """The original-format store, rebuilt from the skeleton in `workdir`, reading tensors from here."""
        from .checkpoint import CheckpointStore, SavedModelStore
        from .keras_h5 import H5Store, KerasZipStore

        root = os.path.join(workdir, "model")
        skeleton = self.h5.get("skeleton", {})
        if not isinstance(skeleton, (h5py.Group, dict)):
            raise WcompressError("damaged container (skeleton is not a group)", self.path)
        self._all_blobs_present("skeleton", skeleton)
        for ds in skeleton.values():
            if not isinstance(ds, h5py.Dataset):
                raise WcompressError("damaged container (a skeleton entry is not a dataset)", self.path)
            try:
                rel = self._blob_name(ds, "path")
            except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
                raise WcompressError(f"damaged container ({exc})", self.path) from exc
            if not rel or os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
                raise WcompressError(f"skeleton path {rel!r} escapes the model folder", self.path)
            target = os.path.join(root, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                data = _unzipped(ds, self._checksum("skeleton/" + ds.name.split("/")[-1]))
            except (OSError, KeyError, ValueError, RuntimeError) as exc:
                raise WcompressError(f"damaged container ({exc})", self.path) from exc
            with open(target, "wb") as fh:
                fh.write(data)
        os.makedirs(root, exist_ok=True)
        kinds = {"tf1-checkpoint": CheckpointStore, "tf2-checkpoint": CheckpointStore, "savedmodel": SavedModelStore,
                 "keras": KerasZipStore, "keras-h5": H5Store, "weights-h5": H5Store, "keras-weights-h5": H5Store}
        if self.source_format not in kinds:
            raise WcompressError(f"unknown source format {self.source_format!r}", self.path)
        store = kinds[self.source_format].from_skeleton(root, self)
        store.format = self.source_format
        return store


def is_container(path):
    check_structure(path)  # reading the root attributes of a damaged file can crash or hang HDF5
    try:
        with h5py.File(path, "r") as h5:
            return h5.attrs.get("format") == MAGIC
    except (OSError, ValueError, TypeError, RuntimeError, KeyError):
        return False


def restore(container_path, dest, force=False, unsafe=False):
    """Write the container back in its original format (or another Keras format, by the output's suffix).

    With no `dest`, the output goes beside the container under the original's name, tagged `restored`.
    """
    from .store import write_safely
    from .verify import verify_output

    container = ContainerStore(container_path)
    quantized = [e for e in container.entries.values() if e.get("quantized")]
    if quantized:
        bits = sorted({e["quantized"]["bits"] for e in quantized})
        warn(f"{len(quantized)} tensors were stored as {'/'.join(f'int{b}' for b in bits)} codes: the restored "
             "tensors are dequantized (codes x channel scale), not the original values", container_path)
    work = tempfile.mkdtemp(prefix="wcompress-restore-")
    try:
        store = container.original(work)
        # The name recorded in the file is data: only a plain file name is used, never a path.
        name = os.path.basename(container.source_name.replace("\\", "/"))
        if name in ("", ".", ".."):
            name = "model.ckpt" if store.format.endswith("checkpoint") else None
            if dest is None and store.format.endswith("checkpoint"):  # the model was a folder: so is its copy
                dest = os.path.splitext(os.path.abspath(container_path))[0] + "-restored" + os.sep
        expected = {t.name: (t.shape, t.dtype) for t in store.tensors}

        def verify(nbytes, target, fmt):  # before the rename: the stock reader must open what we wrote
            verify_output(target, fmt, expected if fmt == store.format else None, container_path)

        return write_safely(store, dest, lambda info: store.load(info.name), force=force, tag="restored",
                            name=name, beside=container_path, extra_inputs=[container_path], unsafe=unsafe,
                            check=verify)
    finally:
        shutil.rmtree(work, ignore_errors=True)
