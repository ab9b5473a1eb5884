"""`merge`: several models into one (seed 000 ensembled 3–4 models in one graph under a 1 GB budget)."""

import os
import re
import shutil
import tempfile

from wcompress.errors import WcompressError
from wcompress.formats import open_model
from wcompress.runtime.ensemble import build_keras, build_tf1, smoke_run
from wcompress.formats.outputs import default_output
from wcompress.runtime.user_code import custom_object_scope, resolve_custom_objects

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
_KERAS_FORMATS = ("keras", "keras-h5")


def parse_size(text):
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise WcompressError(f"size {text!r} not understood (e.g. 1GB, 500MB, 800MiB, 123456)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def check_weights(weights, count, normalize=True):
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise WcompressError(f"{len(weights)} weights for {count} models")
    if any(w < 0 for w in weights):
        raise WcompressError(f"weights must not be negative: {weights}")
    if normalize and abs(sum(weights) - 1) > 1e-6:
        raise WcompressError(f"weights sum to {sum(weights):g}, not 1 (pass --no-normalize to allow it)")
    return list(weights)


def merge(paths, dest=None, weights=None, dtype=None, budget=None, normalize=True, input_name=None,
          output_name=None, feeds=(), unsafe=False, force=False, custom_objects=None):
    """Build the merged model in a temp folder, optionally cast it to float16, check the budget and that
    the staged output runs on a batch of zeros, then write (by default beside the first model).
    `custom_objects` (a --custom-objects spec or a dict) is what Keras needs to load the members."""
    with custom_object_scope(custom_objects):  # every Keras load below, the format conversions too
        return _merge(paths, dest, weights, dtype, budget, normalize, input_name, output_name, feeds, unsafe,
                      force, resolve_custom_objects(custom_objects))


def _merge(paths, dest, weights, dtype, budget, normalize, input_name, output_name, feeds, unsafe, force,
           custom_objects):
    from wcompress.plugins import get_pass
    from wcompress.methods.runner import run_passes

    if len(paths) < 2:
        raise WcompressError("merge needs at least two models")
    weights = check_weights(weights, len(paths), normalize)
    limit = parse_size(budget) if budget is not None else None
    stores = [open_model(p) for p in paths]
    for store in stores:
        if store.format in ("weights-h5", "keras-weights-h5", "tf2-checkpoint"):
            raise WcompressError(f"a {store.format} file holds weights only, no model to merge; give full models "
                                 "(.keras, Keras .h5, TF1 checkpoints with .meta)", store.path)
    keras_members = all(s.format in _KERAS_FORMATS for s in stores)
    if not keras_members and any(s.format in _KERAS_FORMATS for s in stores):
        raise WcompressError("cannot merge Keras models with TF graphs")
    work = tempfile.mkdtemp(prefix="wcompress-merge-")
    try:
        if keras_members:
            merged = build_keras(paths, weights, os.path.join(work, "merged.keras"), unsafe=unsafe,
                                 custom_objects=custom_objects)
            names = {"input_tensor": "input", "output_tensor": "weighted_sum"}
        else:
            merged = os.path.join(work, "model.ckpt")  # the name it takes inside an output folder
            names = build_tf1(stores, weights, merged, input_name, output_name, feeds)
        passes = [get_pass("fp16").new()] if dtype == "float16" else []
        members = [{"path": s.path, "format": s.format, "bytes": s.bytes, "weight": w}
                   for s, w in zip(stores, weights)]

        def runs_within_budget(size, staged, fmt):
            smoke_run(staged, fmt, unsafe=unsafe, custom_objects=custom_objects)
            if limit is not None and size > limit:
                table = "; ".join(f"{os.path.basename(os.path.normpath(m['path']))} {m['bytes']:,} B" for m in members)
                raise WcompressError(f"merged model would be {size:,} B, over the budget of {limit:,} B "
                                     f"(members: {table})")

        result = run_passes(open_model(merged), passes, dest or default_output(stores[0], "merged"), force=force,
                            show_progress=False, extra_inputs=[f for s in stores for f in s.files()],
                            check=runs_within_budget, unsafe=unsafe)
        return {"members": members, "output": result.output.path, "output_files": result.output.files,
                "output_bytes": result.output_bytes, "dtype": dtype or "float32", "budget": limit, **names}
    finally:
        shutil.rmtree(work, ignore_errors=True)
