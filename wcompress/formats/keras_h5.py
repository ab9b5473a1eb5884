"""Keras files: `.keras` (zip), Keras 3 `.weights.h5`, legacy full-model `.h5` and legacy weights-only `.h5`."""

import json
import os
import re
import shutil
import tempfile
import weakref
import zipfile
import zlib

import h5py
import numpy as np

from wcompress.errors import WcompressError
from wcompress.formats.dtypes import BFLOAT16, as_dataset_values, dataset_dtype, is_numeric, says_bfloat16
from wcompress.formats.h5check import check_structure, foreign_storage
from wcompress.formats.h5util import NO_TIMES, create_file, create_group
from wcompress.formats.outputs import native_suffix
from wcompress.formats.store import ModelStore
from wcompress.formats.tensors import OTHER, TensorInfo, assign_layer_order, classify, natural_key

# A dataset may declare any shape: refuse one whose stored bytes could not hold it (a never-written
# or crafted dataset would otherwise be allocated in full on its word).
MAX_DATASET_EXPANSION = 4096
# Nesting deeper than this is not a model a Keras version wrote (and a link cycle would recurse forever).
MAX_GROUP_DEPTH = 64
# A .keras entry that inflates beyond this ratio (and size) is a zip bomb, not a model.
MAX_ZIP_RATIO = 1000
ZIP_RATIO_FLOOR = 64 * 2**20
MAX_CONFIG_BYTES = 256 * 2**20

# Keras 3 stores a layer's variables as vars/0, vars/1, ...: their names, by layer class.
_KERAS3_VARS = {
    "dense": ["kernel", "bias"],
    "einsum_dense": ["kernel", "bias"],
    "conv": ["kernel", "bias"],
    "depthwise_conv": ["kernel", "bias"],
    "separable_conv": ["depthwise_kernel", "pointwise_kernel", "bias"],
    "batch_normalization": ["gamma", "beta", "moving_mean", "moving_variance"],
    "layer_normalization": ["gamma", "beta"],
    "embedding": ["embeddings"],
    "cell": ["kernel", "recurrent_kernel", "bias"],
}


def _snake(name):
    """Keras's own snake case of a class name (its to_snake_case): Conv2D → conv2d, SimpleRNN → simple_rnn,
    DepthwiseConv2D → depthwise_conv2d."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras3_leaf(kind, index, quantized=None):
    """The name of variable `index` of a layer of this kind; `quantized` = (variable count, use_bias) for a
    layer Keras quantized, whose variables follow the weights: kernel, [bias], then its quantization
    parameters (kernel_scale; with int4, also kernel_zero and g_idx)."""
    kind = re.sub(r"_\d+$", "", kind)
    if re.match(r"(conv\d+d|conv\d+d_transpose)$", kind):
        kind = "conv"
    kind = re.sub(r"^(depthwise_conv|separable_conv)\d+d$", r"\1", kind)
    if kind.endswith("cell") or kind in ("lstm", "gru", "simple_rnn"):
        kind = "cell"
    names = _KERAS3_VARS.get(kind)
    if quantized and names:
        count, use_bias = quantized
        weights = names[:1] + (["bias"] if use_bias and "bias" in names else [])
        names = weights + [f"{names[0]}_scale", f"{names[0]}_zero", "g_idx"][:count - len(weights)]
    return names[index] if names and index < len(names) else f"var{index}"


def _quantization_mode(config):
    """Keras's quantization mode of a layer config ("int8", "int4/128", "gptq/..."), or None."""
    policy = config.get("dtype")
    inner = policy.get("config") if isinstance(policy, dict) else None
    mode = inner.get("mode") if isinstance(inner, dict) else None
    return mode if isinstance(mode, str) and mode.startswith(("int", "gptq")) else None


def _quantized_layer(config, group):
    """(variable count, use_bias) when Keras quantized this layer, else None. The config's dtype policy
    says so (mode int8, int4/...); a .weights.h5 has no config, so there integer codes in vars/0 do, and
    the count's parity tells the bias (one kernel, an optional bias, then 1 or 3 quantization variables)."""
    count = sum(1 for key in group if key.isdigit())
    if config is not None:
        return (count, bool(config.get("use_bias", True))) if _quantization_mode(config) else None
    first = group.get("0")
    if not isinstance(first, h5py.Dataset) or first.dtype.kind not in "iu" or len(first.shape or ()) < 2:
        return None
    return count, count % 2 == 1


class Placeholder:
    """Stands for a tensor in a skeleton file: the dataset keeps shape, dtype and attributes, no data."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype


class H5Store(ModelStore):
    """Any Keras HDF5 weights layout. Tensor names are dataset paths inside the HDF5 file."""

    def __init__(self, path, h5_path=None, config=None, layer_sequence=None):
        super().__init__(path)
        self.h5_path = h5_path or path
        check_structure(self.h5_path, name=path)  # also refuses links to other files
        try:
            self.h5 = h5py.File(self.h5_path, "r")
            _check_name_lists(self.h5, path)
            self.layout = self._detect_layout()
            self.config = config
            if self.layout == "legacy":
                self.format = "keras-h5" if "model_config" in self.h5.attrs else "weights-h5"
                infos, model_order = self._legacy_tensors()
            else:
                self.format = "keras" if config is not None else "keras-weights-h5"
                infos, model_order = self._keras3_tensors()
        except WcompressError:
            raise
        # SystemError: h5py's report of an object it cannot decode inside a visit callback.
        except (OSError, KeyError, ValueError, TypeError, AttributeError, RuntimeError, IndexError,
                SystemError) as exc:
            raise WcompressError(f"not a readable HDF5 model file ({_cause(exc)})", path) from exc
        if layer_sequence is not None:
            self.order_source = "file"
        elif model_order:
            self.order_source = "model"
            layer_sequence = model_order
        self.tensors = assign_layer_order(infos, layer_sequence)

    def _detect_layout(self):
        root = self.h5
        if "layer_names" in root.attrs or ("model_weights" in root and "layer_names" in root["model_weights"].attrs):
            return "legacy"
        if "layers" in root or "vars" in root:
            return "keras3"
        raise WcompressError("HDF5 file holds no Keras weights (no layer_names, no layers/ group)", self.path)

    def _legacy_tensors(self):
        weights = self.h5["model_weights"] if "model_weights" in self.h5 else self.h5
        prefix = "model_weights/" if "model_weights" in self.h5 else ""
        layers = [_text(n) for n in weights.attrs["layer_names"]]
        infos = []
        for layer in layers:
            if layer not in weights:
                raise WcompressError(f"layer {layer!r} listed in layer_names is missing", self.path)
            for wname in (_text(n) for n in weights[layer].attrs.get("weight_names", [])):
                infos.append(self._info(prefix + layer + "/" + wname, layer, wname.split("/")[-1].split(":")[0], ()))
        if "optimizer_weights" in self.h5:
            group = self.h5["optimizer_weights"]
            names = []
            group.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            for n in sorted(names, key=natural_key):
                infos.append(self._info("optimizer_weights/" + n, "(optimizer)", n.split("/")[-1].split(":")[0],
                                        ("optimizer_weights",)))
        return infos, layers

    def _keras3_tensors(self):
        class_of, config_of = {}, {}
        order = []
        if self.config is not None:
            for layer in _config_layers(self.config):
                class_of[layer["config"].get("name", "")] = layer.get("class_name", "")
                config_of[layer["config"].get("name", "")] = layer["config"]
                order.append(layer["config"].get("name", ""))
        infos = []
        datasets = []
        self.h5.visititems(lambda n, o: datasets.append(n) if isinstance(o, h5py.Dataset) else None)
        for name in sorted(datasets, key=natural_key):
            parts = name.split("/")
            if parts[0] == "optimizer":
                infos.append(self._info(name, "(optimizer)", parts[-1], ("optimizer",)))
                continue
            group_path = "/".join(parts[:-1])
            top = "/".join(parts[:2]) if parts[0] == "layers" else group_path
            vars_group = self.h5.get(top + "/vars")
            layer = _text(vars_group.attrs["name"]) if vars_group is not None and "name" in vars_group.attrs else top
            kind = parts[-3] if len(parts) >= 3 else ""
            if layer in class_of and kind in ("vars",) + tuple(parts[1:2]):
                kind = _snake(class_of[layer])
            quantized = None
            if parts[-1].isdigit():
                config = config_of.get(layer) if self.config is not None else None
                if self.config is None or config is not None:
                    quantized = _quantized_layer(config, self.h5[group_path])
                if quantized and config is not None:
                    self.quantization_modes[layer] = _quantization_mode(config)
            leaf = _keras3_leaf(kind, int(parts[-1]), quantized) if parts[-1].isdigit() else parts[-1]
            infos.append(self._info(name, layer, leaf, parts[:-1]))
        return infos, order

    def _info(self, name, layer, leaf, parents):
        ds = self.h5[name]
        if not isinstance(ds, h5py.Dataset) or ds.shape is None:
            raise WcompressError(f"{name!r} is not a tensor dataset", self.path)
        dtype = dataset_dtype(ds)
        return TensorInfo(name=name, shape=tuple(ds.shape), dtype=dtype, layer=layer,
                          role=classify(leaf, tuple(ds.shape), dtype, parents) if is_numeric(dtype) else OTHER)

    def load(self, name):
        try:
            value = checked_read(self.h5[name], self.path)
        except WcompressError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise WcompressError(f"cannot read {name!r} ({_cause(exc)})", self.path) from exc
        return np.asarray(value)

    def files(self):
        return [self.path]

    @property
    def casts_whole_layers(self):
        """A Keras model file gives each layer one dtype policy: a cast must cover the whole layer."""
        return self.config is not None or "model_config" in self.h5.attrs

    def write(self, target, produce):
        retyped = self._write_h5(target, produce)
        if retyped and "model_config" in self.h5.attrs:
            with h5py.File(target, "r+") as out:
                config = json.loads(_text(out.attrs["model_config"]))
                set_layer_dtypes(config, retyped)
                out.attrs["model_config"] = json.dumps(config)
        return [target]

    def _write_h5(self, target, produce):
        """Copy the HDF5 structure with each tensor from produce(); return {layer: new dtype} for casts."""
        by_name = {t.name: t for t in self.tensors}
        retyped = {}

        def tracking(info):
            value = produce(info)
            if value is not None and not isinstance(value, Placeholder) and value.dtype != info.dtype:
                retyped[info.layer] = value.dtype
            return value

        with create_file(target) as out:
            _copy_attrs(self.h5, out)
            self._copy_group(self.h5, out, by_name, tracking)
        return retyped

    def _copy_group(self, src, dst, by_name, produce, depth=0):
        if depth > MAX_GROUP_DEPTH:
            raise WcompressError(f"groups nested deeper than {MAX_GROUP_DEPTH} (or a link cycle) at {src.name}", self.path)
        for key in src.keys():
            try:
                item = src[key]
            except (KeyError, OSError, RuntimeError) as exc:
                raise WcompressError(f"{src.name}/{key} cannot be read ({_cause(exc)})", self.path) from exc
            if isinstance(item, h5py.Group):
                child = create_group(dst, key)
                _copy_attrs(item, child)
                had_data = _has_dataset(item)
                self._copy_group(item, child, by_name, produce, depth + 1)
                if had_data and not _has_dataset(child):
                    del dst[key]  # every weight of this group was dropped: drop the group too
                elif "weight_names" in item.attrs:
                    kept = [n for n in item.attrs["weight_names"] if _text(n) in child]
                    if len(kept) != len(item.attrs["weight_names"]):
                        child.attrs["weight_names"] = np.array(kept, dtype=item.attrs["weight_names"].dtype)
            else:
                info = by_name.get(item.name.lstrip("/"))
                if info is None:
                    if isinstance(item, h5py.Dataset):
                        # Read and rewrite, validated, rather than h5py's Group.copy, which trusts the
                        # file's internal structure (a damaged byte there crashed the process).
                        _copy_attrs(item, dst.create_dataset(key, data=checked_read(item, self.path), **NO_TIMES))
                    continue
                value = produce(info)
                if isinstance(value, Placeholder):
                    _copy_attrs(item, dst.create_dataset(key, shape=value.shape, dtype=value.dtype, **NO_TIMES),
                                value.dtype)
                elif value is not None:
                    _copy_attrs(item, dst.create_dataset(key, data=value, **NO_TIMES), value.dtype)
        if "layer_names" in src.attrs and isinstance(src, h5py.Group):
            kept = [n for n in src.attrs["layer_names"] if _text(n) in dst]
            if len(kept) != len(src.attrs["layer_names"]):
                dst.attrs["layer_names"] = np.array(kept, dtype=src.attrs["layer_names"].dtype)


    def skeleton(self, kept, retyped, workdir):
        """The file with every tensor an empty placeholder: structure, attributes and config only."""
        target = os.path.join(workdir, "model.h5")
        self.write(target, self._placeholders(kept, retyped))
        with open(target, "rb") as fh:
            return {"model.h5": fh.read()}, {}

    def _placeholders(self, kept, retyped):
        kept = set(kept)
        return lambda info: Placeholder(info.shape, retyped.get(info.name, info.dtype)) if info.name in kept else None

    @classmethod
    def from_skeleton(cls, folder, reader):
        store = cls(os.path.join(folder, "model.h5"))
        store.load = reader.get
        return store


class KerasZipStore(H5Store):
    """A Keras 3 `.keras` archive: config.json + metadata.json + model.weights.h5."""

    WEIGHTS = "model.weights.h5"

    def __init__(self, path, layer_sequence=None):
        try:
            archive = zipfile.ZipFile(path)
            names = archive.namelist()
            if self.WEIGHTS not in names or "config.json" not in names:
                raise WcompressError("not a Keras archive (no config.json / model.weights.h5)", path)
            for item in archive.infolist():
                if item.file_size > max(ZIP_RATIO_FLOOR, MAX_ZIP_RATIO * max(item.compress_size, 1)):
                    raise WcompressError(f"archive entry {item.filename!r} would inflate {item.compress_size:,} bytes "
                                         f"to {item.file_size:,}: refused as a zip bomb", path)
            if archive.getinfo("config.json").file_size > MAX_CONFIG_BYTES:
                raise WcompressError("config.json is implausibly large", path)
            config = json.loads(archive.read("config.json"))
            if not isinstance(config, dict):
                raise WcompressError("config.json is not a Keras model config", path)
            self._tmp = tempfile.mkdtemp(prefix="wcompress-keras-")
            # Removed when the store is collected or, if it lives until then, when the interpreter exits
            # (__del__ does not run for objects alive at shutdown: a long test process leaked these).
            weakref.finalize(self, shutil.rmtree, self._tmp, True)
            archive.extract(self.WEIGHTS, self._tmp)
        except WcompressError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, RecursionError, zlib.error, KeyError) as exc:
            raise WcompressError(f"not a readable .keras archive ({_cause(exc)})", path) from exc
        self.archive = archive
        super().__init__(path, os.path.join(self._tmp, self.WEIGHTS), config, layer_sequence)
        self.format = "keras"

    def write(self, target, produce):
        weights = target + ".weights-tmp.h5"
        retyped = self._write_h5(weights, produce)
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as out:
            for item in self.archive.infolist():
                if item.filename == self.WEIGHTS:
                    # The original entry's metadata (date, mode) keeps the archive reproducible.
                    with open(weights, "rb") as src, out.open(_fresh_info(item), "w", force_zip64=True) as dst:
                        shutil.copyfileobj(src, dst, 1 << 22)
                elif item.filename == "config.json" and retyped:
                    config = json.loads(self.archive.read(item.filename))
                    set_layer_dtypes(config, retyped)
                    out.writestr(item, json.dumps(config))
                else:
                    out.writestr(item, self.archive.read(item.filename))
        os.remove(weights)
        return [target]

    def write_weights(self, target, produce):
        """Only the archive's weights file: exactly Keras 3's `.weights.h5` format."""
        self._write_h5(target, produce)
        return [target]

    def skeleton(self, kept, retyped, workdir):
        target = os.path.join(workdir, "model.keras")
        self.write(target, self._placeholders(kept, retyped))
        with open(target, "rb") as fh:
            return {"model.keras": fh.read()}, {}

    @classmethod
    def from_skeleton(cls, folder, reader):
        store = cls(os.path.join(folder, "model.keras"))
        store.load = reader.get
        return store


def set_layer_dtypes(config, layer_dtypes):
    """Give the named layers a dtype policy (e.g. float16), in a Keras 2 or Keras 3 model config."""
    for layer in _config_layers(config):
        cfg = layer.get("config", {})
        dtype = layer_dtypes.get(cfg.get("name"))
        if dtype is None:
            continue
        name = np.dtype(dtype).name
        if isinstance(cfg.get("dtype"), dict):
            cfg["dtype"] = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": name},
                            "registered_name": None}
        else:
            cfg["dtype"] = name


def _fresh_info(item):
    info = zipfile.ZipInfo(item.filename, date_time=item.date_time)
    info.external_attr, info.compress_type = item.external_attr, item.compress_type
    return info


def _config_layers(config):
    """Layers of a Keras config in model order, nested models flattened."""
    inner = config.get("config", {})
    for layer in inner.get("layers", []) if isinstance(inner, dict) else []:
        yield layer
        if isinstance(layer.get("config"), dict) and "layers" in layer["config"]:
            yield from _config_layers(layer)


def _check_name_lists(h5, path):
    """Keras's `layer_names` / `weight_names` attributes, on any group, must be lists of names: every
    reader and writer here iterates them."""
    groups = [h5]
    h5.visititems(lambda n, o: groups.append(o) if isinstance(o, h5py.Group) else None)
    for group in groups:
        for key in ("layer_names", "weight_names"):
            if key not in group.attrs:
                continue
            names = group.attrs[key]
            if not isinstance(names, np.ndarray) or names.ndim != 1 or (
                    names.size and not all(isinstance(n, (bytes, str)) for n in names)):
                raise WcompressError(f"attribute {key} of {group.name} is not a list of names", path)


def checked_read(ds, path):
    """A dataset's values, after checking that the file really holds the bytes its shape declares."""
    if not isinstance(ds, h5py.Dataset) or ds.shape is None:
        raise WcompressError(f"{ds.name} is not a readable dataset", path)
    if foreign_storage(ds):
        raise WcompressError(f"{ds.name} {foreign_storage(ds)}: refused", path)
    declared = ds.size * ds.dtype.itemsize
    held = ds.id.get_storage_size()
    if declared and is_numeric(dataset_dtype(ds)) and (
            (ds.compression is None and held < declared) or held * MAX_DATASET_EXPANSION < declared):
        raise WcompressError(f"{ds.name} declares {declared:,} bytes but the file holds {held:,} "
                             "(truncated, never written, or crafted)", path)
    return as_dataset_values(np.asarray(ds[()]), ds)


def _cause(exc):
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _copy_attrs(src, dst, dtype=None):
    """The attributes of `src` on `dst`; for a dataset written with values of `dtype`, Keras's dtype
    attribute says bfloat16 exactly when the values are (a cast to float16 drops it)."""
    for k, v in src.attrs.items():
        dst.attrs[k] = v
    if dtype is not None and np.dtype(dtype) == BFLOAT16:
        dst.attrs["dtype"] = "bfloat16"
    elif dtype is not None and says_bfloat16(dst.attrs.get("dtype")):
        del dst.attrs["dtype"]


def _has_dataset(group):
    found = []
    group.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) else None)
    return bool(found)


def _text(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


# Keras stamps the time into what it saves (HDF5 object times, zip entry dates, metadata.json's
# date_saved) and numbers shared objects by their memory address (`shared_object_id`). Files Keras
# writes for us are rewritten without either, so a command run twice writes the same bytes: dates
# become the zip format's epoch, a value that says "no date", and shared objects are numbered 1, 2, …
# in the order the config names them.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
UNDATED = "1980-01-01@00:00:00"


def rewrite_reproducibly(path):
    """Rewrite a Keras-saved `.keras`, `.h5` or `.weights.h5` in place through our own writer (no times)."""
    is_zip = zipfile.is_zipfile(path)
    store = KerasZipStore(path) if is_zip else H5Store(path)
    staged = path + ".undated"
    try:
        store.write(staged, lambda info: store.load(info.name))
    finally:
        store.h5.close()
        if is_zip:
            store.archive.close()
            shutil.rmtree(store._tmp, ignore_errors=True)
    if is_zip:
        _undate_archive(staged)
    else:
        with h5py.File(staged, "r+") as h5:
            if "model_config" in h5.attrs:
                h5.attrs["model_config"] = _renumber_shared_objects(_text(h5.attrs["model_config"]))
    os.replace(staged, path)


def _renumber_shared_objects(text):
    if "shared_object_id" not in text:
        return text
    numbers = {}

    def renumber(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "shared_object_id" and isinstance(value, int):
                    node[key] = numbers.setdefault(value, len(numbers) + 1)
                else:
                    renumber(value)
        elif isinstance(node, list):
            for value in node:
                renumber(value)

    config = json.loads(text)
    renumber(config)
    return json.dumps(config)


def _undate_archive(path):
    with zipfile.ZipFile(path) as archive:
        entries = [(item, archive.read(item.filename)) for item in archive.infolist()]
    with zipfile.ZipFile(path, "w") as out:
        for item, data in entries:
            if item.filename == "config.json":
                data = _renumber_shared_objects(data.decode()).encode()
            elif item.filename == "metadata.json":
                metadata = json.loads(data)
                if isinstance(metadata, dict) and "date_saved" in metadata:
                    metadata["date_saved"] = UNDATED
                    data = json.dumps(metadata).encode()
            info = zipfile.ZipInfo(item.filename, date_time=ZIP_EPOCH)
            info.external_attr, info.compress_type = item.external_attr, item.compress_type
            out.writestr(info, data)


def convert_keras(source, source_format, target, target_format, unsafe=False):
    """Re-save a Keras model file in another Keras format, through Keras itself (stock reader and writer)."""
    from wcompress.formats.tfenv import load

    load()  # quiet TensorFlow start-up before Keras imports it
    import keras

    try:
        model = keras.models.load_model(source, compile=False, safe_mode=not unsafe)
    except Exception as exc:  # noqa: BLE001 - any failure to deserialize is reported in one line
        from wcompress.errors import root_cause

        raise WcompressError(f"cannot write {native_suffix(target_format)}: Keras could not load the model to "
                             f"convert it ({root_cause(exc)}); name the output {native_suffix(source_format)}") from exc
    if target_format == "keras-h5" and any(np.dtype(w.dtype) == BFLOAT16 for w in model.weights):
        # Keras writes them (as opaque 2-byte data) but its legacy loader has no cast back: checked in 3.15.
        raise WcompressError("Keras cannot load bfloat16 weights from a legacy .h5 file (it writes them, then fails "
                             "to read them back): name the output .keras or .weights.h5", target)
    save_keras(model, target, weights_only=target_format == "keras-weights-h5")
    return [target]


def save_keras(model, target, weights_only=False):
    """Keras's own save (or save_weights), then the file rewritten without the times Keras stamps into it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that .h5 is a legacy format: the user asked for it
        model.save_weights(target) if weights_only else model.save(target)
    rewrite_reproducibly(target)
