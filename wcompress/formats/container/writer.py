"""Writing the container: each tensor in its smallest encoding, its streams entropy-coded (coders.py),
small streams pooled, and an index checksummed over everything a reader uses."""

import json
import lzma
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

from wcompress.errors import WcompressError
from wcompress.formats.container import coders, encodings, levels
from wcompress.formats.container.coders import CODECS
from wcompress.formats.container.layout import (
    ECQ_VERSION, MAGIC, POOL_FLUSH_BYTES, POOL_ORDER_VERSION, POOL_STREAM_BYTES, QUANT_LEVELS,
    TREE_VERSION, VALUE_CHOICES, VERSION, _crc, _fits, pooled_bytes, write_attributes)
from wcompress.formats.container.quantization import (
    calibrated_source, channel_axis, ecq_axis, ecq_quantizes, ecq_unit, halves_floats, parse_values, quantizable,
    quantize, quantize_calibrated, quantize_ecq, step_exponents, steps_from_exponents)
from wcompress.formats import h5tree
from wcompress.formats.h5util import NO_TIMES, create_file, create_group
from wcompress.formats.tensors import QUANTIZATION


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


def _described(files, work):
    """Take the HDF5 and .keras skeleton files a tree describes exactly out of `files`: {path: tree}
    (h5tree.py). The tree goes into the index, where xz packs it with the tensor names it repeats."""
    trees = {}
    for rel, data in sorted(files.items()):
        if data.startswith((h5tree.HDF5_SIGNATURE, h5tree.ZIP_SIGNATURE)):
            path = os.path.join(work, "described")
            with open(path, "wb") as fh:
                fh.write(data)
            tree = h5tree.describe(path)
            if tree is not None:
                trees[rel] = tree
                del files[rel]
    return trees


# A byte dataset under this size is stored compact, inside its object header: HDF5 hands small raw data
# out of 2 KiB blocks, and the container's metadata, written between them, strands the rest of each block.
COMPACT_BYTES = 60_000


def _byte_dataset(group, name, data):
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    if data.nbytes < COMPACT_BYTES:
        dcpl.set_layout(h5py.h5d.COMPACT)
    return group.create_dataset(name, data=data, dcpl=dcpl, **NO_TIMES)


def _drop_pool_offsets(entries):
    """Version 9 readers place pooled streams end to end in index order, which is the order they were pooled."""
    ends = {}
    for entry in entries:
        for ref in entry["streams"].values():
            if "pool" in ref:
                assert ref["offset"] == ends.get(ref["pool"], 0)
                ends[ref["pool"]] = ref["offset"] + pooled_bytes(ref)
                del ref["offset"]


def _idle_steps_at_median(exponents, codes, axis):
    """A channel whose levels are all zero restores to zeros at any step: give it the median exponent of
    the others, which codes in a bit or two, not the outlier its tiny weights chose."""
    if axis is None or exponents.size < 2:
        return exponents
    idle = ~np.any(np.moveaxis(codes, axis, -1).reshape(-1, exponents.size), axis=0)
    if not idle.any() or idle.all():
        return exponents
    out = exponents.copy()
    out[idle] = np.int16(np.median(exponents[~idle]).round())
    return out


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
        kinds = set()
        for chosen in {values, *self.value_plan.values()}:
            kinds.add(parse_values(chosen)[0])
            if kinds - set(VALUE_CHOICES):
                raise WcompressError(f"--values takes {', '.join(VALUE_CHOICES)}, not {chosen!r}")
        if hessians and not kinds & {*QUANT_LEVELS, "ecq"}:
            raise WcompressError("calibration data is for --values int8, int4 or ecq")
        self.store, self.values, self.codec = store, values, codec
        self.hessians = {} if hessians is None else hessians  # a Calibration also carries ecq's units
        self.group_sizes = tuple(sorted(set(encodings.GROUP_SIZES) | set(group_sizes)))

    def __call__(self, target, produce):
        entries, kept, retyped = [], [], {}
        with create_file(target, packed_metadata=True) as h5:
            name = os.path.basename(getattr(self.store, "prefix", "") if self.store.format.endswith("checkpoint")
                                    else os.path.normpath(self.store.path))
            attributes = dict(format=MAGIC, version=VERSION, source_format=self.store.format, source_name=name,
                              codec=self.codec, values=self.values)
            write_attributes(h5, attributes)
            streams = create_group(h5, "streams")
            self._ecq = False
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
            if self._ecq:
                attributes["version"] = max(attributes["version"], ECQ_VERSION)
                h5.attrs["version"] = ECQ_VERSION
            with tempfile.TemporaryDirectory() as work:
                files, raw = self.store.skeleton(kept, retyped, work)
                trees = _described(files, work)
            if trees:
                attributes["version"] = max(attributes["version"], TREE_VERSION)
                h5.attrs["version"] = attributes["version"]
            # What each blob is (a skeleton file's path, a raw entry's key) is recorded in the index only.
            blob_names = {}
            skeleton = create_group(h5, "skeleton") if files else None
            for n, (rel, data) in enumerate(sorted(files.items())):
                packed = _zipped(data)
                _byte_dataset(skeleton, str(n), packed)
                self._checksums[f"skeleton/{n}"] = _crc(packed)
                blob_names[f"skeleton/{n}"] = rel
            blobs = create_group(h5, "raw") if raw else None
            for n, key in enumerate(sorted(raw)):
                packed = _zipped(raw[key])
                _byte_dataset(blobs, str(n), packed)
                self._checksums[f"raw/{n}"] = _crc(packed)
                blob_names[f"raw/{n}"] = key
            document = {"tensors": entries, "checksums": self._checksums, "attributes": attributes,
                        "blobs": blob_names}
            if trees:
                document["skeleton_trees"] = trees
            if attributes["version"] >= POOL_ORDER_VERSION:
                _drop_pool_offsets(entries)
            index = _zipped(json.dumps(document, separators=(",", ":")).encode())
            _byte_dataset(h5, "index", index)
            h5.attrs["index_crc32"] = _crc(index)
        return [target]

    def _flush_pool(self, group):
        if self._pool:
            pool = np.concatenate(self._pool)
            _byte_dataset(group, f"pool{self._pools}", pool)
            self._checksums[f"streams/pool{self._pools}"] = _crc(pool)
        self._pool, self._pool_bytes, self._pools = [], 0, self._pools + (1 if self._pool else 0)

    def _value_dtype(self, array, values):
        if halves_floats(values) and array.dtype in (np.float32, np.float64):
            if _max_finite_abs(array) > float(np.finfo(np.float16).max):
                return array.dtype, True  # would overflow: keep full precision for this tensor
            return np.dtype(np.float16), False
        return array.dtype, False

    def _prepare(self, info, array):
        """Everything the coder needs from the array: the raw streams of the smallest raw encoding and,
        with codec auto, of the encodings competing once coded. The array itself is not kept."""
        quantized, scale = None, None
        values = self.value_plan.get(info.name, self.values)
        if info.role in QUANTIZATION:
            values = None  # codes and scales of a layer already quantized: kept exactly as they are
        kind, qp = parse_values(values)
        array = calibrated_source(self.hessians, info.name, array, values)
        if kind == "ecq" and ecq_quantizes(array, ecq_unit(self.hessians, info.name)):
            prepared = self._prepare_ecq(info, array, qp)
            if prepared is not None:
                return prepared
            values = None  # levels coded too small for a reader to accept (an all-zero tensor): stored as it is
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

    def _prepare_ecq(self, info, array, qp):
        """An ecq tensor: its levels context-coded (levels.py) and each channel's step 2^(k/8) as its int16 k;
        None when the coded levels are too small for a reader to accept them (see _fits)."""
        axis = ecq_axis(array.shape)
        unit = ecq_unit(self.hessians, info.name)
        calibrated = quantize_calibrated(array, self.hessians.get(info.name), None, qp, unit)
        codes, steps = calibrated or quantize_ecq(array, qp, unit=unit)
        blob = levels.encode(levels.to_plane(codes, axis))
        exponents = step_exponents(steps)  # steps are on the grid already: this recovers each k exactly
        assert np.array_equal(steps_from_exponents(exponents), steps)
        exponents = _idle_steps_at_median(exponents, codes, axis)
        if not _fits(array.nbytes, blob.nbytes + exponents.nbytes):
            return None
        self._ecq = True
        quantized = {"ecq": qp, "axis": axis, **({"calibrated": True} if calibrated is not None else {})}
        entry = {"name": info.name, "shape": list(array.shape), "dtype": str(array.dtype), "layer": info.layer,
                 "role": info.role, "order": info.order, "nnz": int(np.count_nonzero(codes)), "value_dtype": "int32",
                 "fp16_overflow": False, "quantized": quantized}
        return entry, "ecq", {"ecq": {"levels": blob, "scales": exponents}}, array.nbytes, True

    def _code(self, prepared):
        """(entry, encoding, streams, {stream: (coder, stored bytes)} or None): with codec auto, the
        encoding whose streams are fewest bytes once each is coded by its smallest coder."""
        entry, raw_encoding, options, decoded, numeric = prepared
        raw_streams = options[raw_encoding]
        if raw_encoding == "ecq":  # range-coded already: no other coder makes the levels smaller
            return entry, "ecq", raw_streams, {"levels": ("raw", raw_streams["levels"]),
                                               "scales": coders.smallest(raw_streams["scales"], also=("levels",))}
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
        counted = streams["levels" if encoding == "ecq" else "values"]  # ecq: the coded levels' bytes
        return {**entry, "encoding": encoding, "streams": names, "entries": int(counted.size)}
