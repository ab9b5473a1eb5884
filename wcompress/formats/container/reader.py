"""Reading the container: a ModelStore over its index, every tensor decoded on demand and checked against
its checksum and the bounds in layout.py before memory is allocated for it."""

import json
import os

import h5py
import numpy as np

from wcompress.errors import WcompressError, warn
from wcompress.formats import h5tree
from wcompress.formats.container import coders, encodings
from wcompress.formats.container.layout import (
    COVERED_ATTRIBUTES, MAGIC, MAX_EXPANSION, POOL_ORDER_VERSION, READABLE_VERSIONS, TOTAL_EXPANSION_FLOOR,
    TREE_VERSION, _INDEX_DTYPES, _VALUE_DTYPES, _crc, _fits, _unzipped, pooled_bytes, read_attributes)
from wcompress.formats.container.quantization import QP_RANGE, STEP_EXPONENT_RANGE, dequantize, steps_from_exponents
from wcompress.formats.dtypes import is_float
from wcompress.formats.h5check import check_structure, foreign_storage
from wcompress.formats.store import ModelStore
from wcompress.formats.tensors import TensorInfo


def _memory_bytes():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every platform says
        return 2**40


class ContainerStore(ModelStore):
    """Reads a container: the tensor index (validated), and one decoded tensor at a time."""

    format = "wcompress-container"

    def __init__(self, path):
        super().__init__(path)
        self.file_bytes = os.path.getsize(path)
        check_structure(path)
        try:
            self.h5 = h5py.File(path, "r")
            attrs = read_attributes(self.h5)
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
            self._trees = index.get("skeleton_trees", {}) if self.version >= TREE_VERSION else {}
            if not isinstance(self._trees, dict):
                raise ValueError("skeleton trees are not a table")
            if self.version >= POOL_ORDER_VERSION:
                _place_pooled_streams(index.get("tensors", []))
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
            if not 0 <= nnz <= n or (entries < nnz and e.get("encoding") != "ecq"):  # ecq: entries are bytes
                raise ValueError(f"non-zero count {nnz} impossible for {n} elements")
            expected = encodings.stream_lengths(e["encoding"], shape, nnz, entries, e.get("pattern"))
            quantized = e.get("quantized")
            if (e["encoding"] == "ecq") != (isinstance(quantized, dict) and "ecq" in quantized):
                raise ValueError("the ecq encoding and ecq quantization come together")
            if quantized is not None:
                ecq = isinstance(quantized, dict) and "ecq" in quantized
                # version 8: an ecq vector has one step, "axis" null
                vector = ecq and self.version >= 8 and len(shape) == 1 and quantized.get("axis", 0) is None
                if not isinstance(quantized, dict) or (len(shape) < 2 and not vector) \
                        or (quantized.get("axis") not in (len(shape) - 1, len(shape) - 2) and not vector) \
                        or not is_float(np.dtype(str(e["dtype"]))) \
                        or (ecq and (type(quantized["ecq"]) is not int or not QP_RANGE[0] <= quantized["ecq"] <= QP_RANGE[1]
                                     or str(e["value_dtype"]) != "int32")) \
                        or (not ecq and (quantized.get("bits") not in (4, 8) or str(e["value_dtype"]) != "int8")):
                    raise ValueError(f"malformed quantization {quantized!r}")
                expected["scales"] = 1 if vector else shape[quantized["axis"]]
            if set(expected) != set(e["streams"]):
                raise ValueError(f"streams {sorted(e['streams'])} do not match encoding {e['encoding']}")
            stored = 0
            for stream, length in expected.items():
                ref = e["streams"][stream]
                dtype = str(ref["dtype"])
                # ecq's steps: int16 exponents k of 2^(k/8) since version 7, float32 steps in version 6
                allowed = {str(e["value_dtype"])} if stream == "values" else _INDEX_DTYPES if stream != "scales" \
                    else {"float32", "int16"} if e["encoding"] == "ecq" else {"float32"}
                if dtype not in allowed:
                    raise ValueError(f"stream {stream} has dtype {dtype}, expected {' or '.join(sorted(allowed))}")
                if int(ref["count"]) != length:
                    raise ValueError(f"stream {stream} holds {ref['count']} entries, expected {length}")
                coder = ref.get("coder")
                if coder is None:  # versions 1 and 2, and --codec none or an HDF5 filter: raw elements
                    nbytes = length * np.dtype(dtype).itemsize
                else:
                    if coder not in coders.CODERS or not isinstance(ref.get("bytes"), int) or ref["bytes"] < 0 \
                            or (coder == "levels" and self.version < coders.LEVELS_CODER_VERSION):
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
                    if "offset" not in ref:
                        raise ValueError(f"stream {stream} has no offset in its pool")
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
        if scales is not None and scales.dtype == np.int16:
            if scales.size and not (STEP_EXPONENT_RANGE[0] <= scales.min() and scales.max() <= STEP_EXPONENT_RANGE[1]):
                raise WcompressError(f"tensor {name!r}: a step exponent is out of range (damaged)", self.path)
            scales = steps_from_exponents(scales)
        dtype = e["value_dtype"] if stored or scales is not None else e["dtype"]
        codes = encodings.decode(e["encoding"], streams, tuple(e["shape"]), dtype, what=f"{self.path}: {name!r}",
                                 pattern=e.get("pattern"), axis=(e.get("quantized") or {}).get("axis"))
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

    def _skeleton_target(self, root, rel):
        """Where skeleton file `rel` (a path from the file: data) goes, refused unless inside `root`."""
        if not isinstance(rel, str) or not rel or os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/") \
                or "\0" in rel:
            raise WcompressError(f"skeleton path {rel!r} escapes the model folder", self.path)
        target = os.path.join(root, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        return target

    def original(self, workdir):
        """The original-format store, rebuilt from the skeleton in `workdir`, reading tensors from here."""
        from wcompress.formats.checkpoint import CheckpointStore, SavedModelStore
        from wcompress.formats.keras_h5 import H5Store, KerasZipStore

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
            target = self._skeleton_target(root, rel)
            try:
                data = _unzipped(ds, self._checksum("skeleton/" + ds.name.split("/")[-1]))
            except (OSError, KeyError, ValueError, RuntimeError) as exc:
                raise WcompressError(f"damaged container ({exc})", self.path) from exc
            with open(target, "wb") as fh:
                fh.write(data)
        for rel, tree in self._trees.items():
            target = self._skeleton_target(root, rel)
            if os.path.exists(target):
                raise WcompressError(f"damaged container (skeleton {rel!r} is stored twice)", self.path)
            try:
                h5tree.rebuild(tree, target)
            except (OSError, KeyError, ValueError, TypeError, RuntimeError, RecursionError) as exc:
                raise WcompressError(f"damaged container ({exc})", self.path) from exc
        os.makedirs(root, exist_ok=True)
        kinds = {"tf1-checkpoint": CheckpointStore, "tf2-checkpoint": CheckpointStore, "savedmodel": SavedModelStore,
                 "keras": KerasZipStore, "keras-h5": H5Store, "weights-h5": H5Store, "keras-weights-h5": H5Store}
        if self.source_format not in kinds:
            raise WcompressError(f"unknown source format {self.source_format!r}", self.path)
        store = kinds[self.source_format].from_skeleton(root, self)
        store.format = self.source_format
        return store


def _place_pooled_streams(tensors):
    """Version 9: a pooled stream's offset is implicit, its pool's streams lie end to end in index order."""
    ends = {}
    for entry in tensors:
        streams = entry.get("streams") if isinstance(entry, dict) else None
        for ref in (streams.values() if isinstance(streams, dict) else ()):
            if not isinstance(ref, dict) or "pool" not in ref:
                continue
            if "offset" in ref:
                raise ValueError("a version-9 pooled stream declares an offset")
            if type(ref.get("bytes" if "coder" in ref else "count")) is not int or not isinstance(ref["pool"], str):
                raise ValueError("a pooled stream without a size")
            size = pooled_bytes(ref)
            if size < 0:
                raise ValueError("a pooled stream without a size")
            ref["offset"] = ends.get(ref["pool"], 0)
            ends[ref["pool"]] = ref["offset"] + size


def is_container(path):
    check_structure(path)  # reading the root attributes of a damaged file can crash or hang HDF5
    try:
        with h5py.File(path, "r") as h5:
            return read_attributes(h5).get("format") == MAGIC
    except (OSError, ValueError, TypeError, RuntimeError, KeyError):
        return False


