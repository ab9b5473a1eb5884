"""The output policy, in one place: where an output goes, in which format, and what it may replace.

- `-o DIR/` (ending in a separator) or `-o` naming an existing folder: write inside it, under the
  input's own name.
- No `-o`: beside the input, `NAME.EXT` -> `NAME.TAG.EXT`; a model that is a folder (SavedModel, a
  checkpoint with an empty prefix) -> a new folder `FOLDER-TAG/` beside it.
- The output's format follows its suffix: `.keras` a Keras 3 archive, `.h5`/`.hdf5` a full-model
  HDF5, `.weights.h5` weights only. Keras models are converted between them where the information
  exists (through Keras itself); any other request is refused in one line naming the suffix to use.
- `--force` replaces only what we would write: a file, a checkpoint prefix's own files, or a
  SavedModel folder that holds nothing else. A folder holding anything else is never deleted.
"""

import os
from dataclasses import dataclass

from wcompress.errors import WcompressError

KERAS_FORMATS = ("keras", "keras-h5", "keras-weights-h5", "weights-h5")
CHECKPOINT_FORMATS = ("tf1-checkpoint", "tf2-checkpoint")
CONTAINER = "wcompress-container"
# Longest first: `.weights.h5` must win over `.h5`.
_SUFFIX_FORMAT = ((".weights.h5", "keras-weights-h5"), (".keras", "keras"), (".hdf5", "keras-h5"), (".h5", "keras-h5"))
_NATIVE_SUFFIX = {"keras": ".keras", "keras-h5": ".h5", "keras-weights-h5": ".weights.h5", "weights-h5": ".h5",
                  CONTAINER: ".h5"}
# What a SavedModel folder may hold: anything else in an existing output folder is the user's.
_SAVEDMODEL_ENTRIES = {"saved_model.pb", "saved_model.pbtxt", "variables", "assets", "assets.extra", "fingerprint.pb",
                       "keras_metadata.pb"}


@dataclass
class OutputPlan:
    path: str  # the final output path (a file, a checkpoint prefix or a folder)
    format: str  # the format written there
    replaces: list  # existing paths the write replaces (needs --force)
    created_dirs: list  # folders the write creates, outermost first (removed again on failure)
    state_file: bool  # may a checkpoint `checkpoint` state file be written beside the prefix?


def split_suffix(name):
    """('model', '.weights.h5') for 'model.weights.h5'; ('ckpt-3', '') for 'ckpt-3'."""
    lower = name.lower()
    for suffix, _ in _SUFFIX_FORMAT:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return os.path.splitext(name)


def suffix_format(path):
    """The Keras format a path's suffix asks for, or None."""
    lower = os.path.basename(path).lower()
    return next((fmt for suffix, fmt in _SUFFIX_FORMAT if lower.endswith(suffix)), None)


def model_name(store):
    """(the input's own name, whether the model is a folder): a file's or a prefix's name, or the folder's."""
    if store.format in CHECKPOINT_FORMATS:
        base = os.path.basename(store.prefix)
        if base:
            return base, False
        return os.path.basename(os.path.abspath(os.path.dirname(store.prefix) or ".")), True
    path = os.path.abspath(store.path)
    return os.path.basename(os.path.normpath(path)), os.path.isdir(path)


def default_output(store, tag, container=False, name=None, beside=None):
    """Beside the input: `m.keras` -> `m.TAG.keras`, `model.ckpt` -> `model.TAG.ckpt`, folders -> `F-TAG/`.

    `name` and `beside` stand in for the input's own name and location (a restored container's model).
    """
    own, is_folder = model_name(store)
    if beside is not None:
        folder = os.path.dirname(os.path.abspath(beside))
    elif store.format in CHECKPOINT_FORMATS:
        folder = os.path.abspath(os.path.dirname(store.prefix) or ".")
        if is_folder:
            folder = os.path.dirname(folder)
    else:
        folder = os.path.dirname(os.path.abspath(os.path.normpath(store.path)))
    name = name or own
    stem, suffix = split_suffix(name)
    if container:
        return os.path.join(folder, f"{stem}.{tag}.h5")
    if is_folder or store.format == "savedmodel":
        return os.path.join(folder, f"{name}-{tag}") + (os.sep if store.format in CHECKPOINT_FORMATS else "")
    return os.path.join(folder, f"{stem}.{tag}{suffix}")


def output_format(source_format, path, container=False):
    """The format written at `path` for a model read as `source_format`, or a one-line refusal."""
    wanted = suffix_format(path)
    shown = split_suffix(os.path.basename(path))[1] or "no suffix"
    if container:
        if wanted in ("keras", "keras-weights-h5"):
            raise WcompressError(f"the container is an HDF5 file of its own that Keras cannot load: name it .h5, "
                                 f"not {shown}", path)
        return CONTAINER
    if source_format in KERAS_FORMATS:
        if wanted is None:
            raise WcompressError(f"Keras loads only files named .keras, .h5 or .weights.h5 ({shown} given): "
                                 f"name the output {_NATIVE_SUFFIX[source_format]}", path)
        if source_format == "weights-h5":
            if wanted != "keras-h5":
                raise WcompressError(f"the input is a legacy weights-only HDF5 file (no model config, not Keras 3's "
                                     f".weights.h5 layout); its output is written as .h5, not {shown}", path)
            return source_format
        if source_format == "keras-weights-h5" and wanted != "keras-weights-h5":
            raise WcompressError(f"the input holds weights only, no model, so it cannot become {shown}: "
                                 "name the output .weights.h5", path)
        return wanted
    if wanted is not None:
        kind = "SavedModel folder" if source_format == "savedmodel" else "checkpoint prefix"
        raise WcompressError(f"a {source_format} input is written as a {kind}, and {shown} names a Keras file: "
                             f"choose a path without that suffix (or `wcompress pack` it into a .h5 container)", path)
    return source_format


def plan_output(store, dest, tag="out", container=False, name=None, beside=None):
    """Resolve a user's -o (or its absence) into an OutputPlan; refuse outputs that would touch an input."""
    if getattr(store, "read_only", None) and not container:
        raise WcompressError(store.read_only, store.path)
    named_folder = False
    if dest is None:
        dest = default_output(store, tag, container, name, beside)
    if dest.endswith(os.sep) or (os.altsep and dest.endswith(os.altsep)) or os.path.isdir(dest):
        if container or store.format != "savedmodel" or dest.endswith(os.sep) or not _is_savedmodel(dest):
            # Write inside the folder, under the input's own name; an existing SavedModel folder
            # named without a trailing separator is instead the output to replace.
            named_folder = True
            dest = os.path.join(dest, _name_inside(store, dest, container, name))
    dest = os.path.normpath(dest)
    fmt = output_format(store.format, dest, container)
    _refuse_inputs(store, dest, fmt)
    replaces = _replaced(store, dest, fmt)
    created = _missing_dirs(os.path.dirname(os.path.abspath(dest)))
    return OutputPlan(dest, fmt, replaces, created, state_file=bool(created) or named_folder)


def _name_inside(store, folder, container, name):
    own, is_folder = model_name(store)
    if container:
        return split_suffix(name or own)[0] + ".h5"
    if store.format in CHECKPOINT_FORMATS:
        if is_folder and os.path.isdir(folder) and os.path.samefile(folder, os.path.dirname(store.prefix) or "."):
            raise WcompressError("output would go into the input checkpoint's own folder (which would then hold two "
                                 "checkpoints); choose another -o path", folder)
        return name or ("model.ckpt" if is_folder else own)
    return name or own


def check_not_input(plan, inputs):
    """Refuse a plan whose output is, or would replace, any of the input files."""
    inputs = {os.path.realpath(f) for f in inputs}
    touched = [plan.path] + plan.replaces
    if any(os.path.realpath(p) in inputs for p in touched):
        raise WcompressError("output would overwrite the input; choose another -o path", plan.path)


def _refuse_inputs(store, dest, fmt):
    prefix = getattr(store, "prefix", None)
    if prefix is not None and fmt in CHECKPOINT_FORMATS and os.path.realpath(prefix) == os.path.realpath(dest):
        raise WcompressError("output would overwrite the input; choose another -o path", dest)
    if os.path.realpath(dest) == os.path.realpath(store.path):
        raise WcompressError("output would overwrite the input; choose another -o path", dest)


def _replaced(store, dest, fmt):
    """Existing paths that writing `dest` in `fmt` would replace."""
    if fmt in CHECKPOINT_FORMATS:
        from wcompress.formats.bundle import data_files

        folder = os.path.dirname(dest) or "."
        if not os.path.isdir(folder):
            return []
        return [dest + s for s in (".index", ".meta") if os.path.exists(dest + s)] + data_files(dest)
    if not os.path.lexists(dest):
        return []
    if fmt == "savedmodel":
        if not _is_savedmodel(dest):
            raise WcompressError("exists and is not a SavedModel folder; wcompress never deletes it: "
                                 "choose another -o path", dest)
        return [dest]
    if os.path.isdir(dest):
        raise WcompressError("is a folder; wcompress never deletes folders: choose another -o path", dest)
    return [dest]


def _is_savedmodel(path):
    """A folder holding a SavedModel and nothing else (so replacing it loses nothing of the user's)."""
    return (os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb"))
            and set(os.listdir(path)) <= _SAVEDMODEL_ENTRIES)


def _missing_dirs(folder):
    missing = []
    while folder and not os.path.exists(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return list(reversed(missing))


def native_suffix(fmt):
    return _NATIVE_SUFFIX.get(fmt, "")


def keras_suffix(name):
    """The Keras suffix a file name ends with ('' for none): what Keras picks its reader by."""
    for ext in (".weights.h5", ".keras", ".hdf5", ".h5"):
        if name.endswith(ext):
            return ext
    return ""
