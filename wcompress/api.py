"""The public Python API: the file commands as functions, over a path or an in-memory `keras.Model`.

    import wcompress
    result = wcompress.sparsify(model, method="relative", delta=0.5)   # model: a keras.Model or a path
    smaller = result.model                                              # a new keras.Model; `model` untouched
    wcompress.pack(model, values="int4", data=x, output="m.h5")

Each function takes the command's options as keyword arguments and returns a result with `.to_dict()`,
which is exactly what the command prints with `--json`. Functions never print: progress is opt-in
(`progress=True`), problems raise `WcompressError`, and warnings go through `warnings` as
`WcompressWarning`. An in-memory model is saved to a private temporary `.keras` (the caller's object is
never modified); without `output=` its result comes back as a new `keras.Model` in `result.model`, and
with `output=` the file is written under the same output policy as the CLI.
"""

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np

from .errors import WcompressError

__all__ = ["profile", "report", "strip", "sparsify", "pack", "restore", "DocumentResult", "SparsifyResult"]


@dataclass
class DocumentResult:
    """profile and report: the document their --json prints."""

    document: dict

    def to_dict(self):
        return self.document

    def __getitem__(self, key):
        return self.document[key]


@dataclass
class SparsifyResult:
    """sparsify: the write (None for a dry run), the pass's summary and every tensor's outcome."""

    summary: dict
    outcomes: list
    run: object = None  # runner.RunResult
    warnings: list = field(default_factory=list)
    model: object = None  # a new keras.Model, for an in-memory input written nowhere else

    def to_dict(self):
        return {**(self.run.to_dict() if self.run else {}), "sparsify": self.summary, "warnings": self.warnings,
                "tensors": [o.__dict__ for o in self.outcomes]}


def _is_keras_model(model):
    return type(model).__module__.startswith(("keras", "tf_keras")) and hasattr(model, "get_weights")


@contextlib.contextmanager
def _as_path(model):
    """(path, private folder or None): an in-memory Keras model saved to a temporary .keras first."""
    if isinstance(model, (str, os.PathLike)):
        yield os.fspath(model), None
        return
    if not _is_keras_model(model):
        raise WcompressError(f"model must be a path or a keras.Model, not {type(model).__name__}")
    from .io.outputs import save_keras

    folder = tempfile.mkdtemp(prefix="wcompress-api-")
    try:
        path = os.path.join(folder, "model.keras")
        save_keras(model, path)
        yield path, folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _fspath(path):
    return None if path is None else os.fspath(path)


def _destination(output, folder):
    """Where to write: the caller's output, or for an in-memory input without one, inside its folder."""
    if output is not None or folder is None:
        return _fspath(output)
    return os.path.join(folder, "result", "model.keras")


def _load_back(path, unsafe=False):
    from .io.predict import load_keras_model

    return load_keras_model(path, unsafe=unsafe)


def as_examples(data):
    """Calibration or evaluation data in any form the API takes: a `.npz` path (or module:function), an
    array, an (x, y) tuple, or a dict of named inputs. Returns {name: array} (`x`, or one per input, and `y`)."""
    if data is None:
        return None
    if isinstance(data, (str, os.PathLike)):
        from .io.predict import load_data

        return load_data(os.fspath(data))
    if isinstance(data, dict):
        examples = {str(k): np.asarray(v) for k, v in data.items()}
    elif isinstance(data, tuple) and len(data) == 2:
        examples = {"x": np.asarray(data[0]), "y": np.asarray(data[1])}
    else:
        examples = {"x": np.asarray(data)}
    if not [k for k in examples if k != "y"]:
        raise WcompressError("data needs an input array (x, or one per model input) and optionally y")
    return examples


def profile(model, order_file=None, progress=False):
    """Per-tensor statistics and model totals (`wcompress profile`)."""
    from .io import open_model
    from .stats import profile_model

    with _as_path(model) as (path, _):
        return DocumentResult(profile_model(open_model(path, order_file=order_file), show_progress=progress))


def report(model, against=None, gzip=True):
    """A container's (or model's) bytes per tensor against the information bounds (`wcompress report`)."""
    from .reporting import report as build_report

    with _as_path(model) as (path, _):
        return DocumentResult(build_report(path, against=against, gzip=gzip))


def strip(model, output=None, force=False, order_file=None, progress=False, unsafe=False):
    """Drop optimizer slots, step counters and metric state (`wcompress strip`)."""
    from .io import open_model
    from .plugins import get_pass
    from .runner import run_passes

    output = _fspath(output)
    with _as_path(model) as (path, folder):
        store = open_model(path, order_file=order_file)
        result = run_passes(store, [get_pass("strip").new()], _destination(output, folder), force=force,
                            show_progress=progress, tag="stripped")
        return _with_model(result, output, folder, unsafe)


def _with_model(result, output, folder, unsafe):
    """An in-memory input's result: the model loaded back, and no trace of our private folder."""
    if folder is not None:
        result.input_path = None  # the private copy of the caller's model is gone once we return
        if output is None or result.output.path.endswith((".keras", ".h5")):
            result.model = _load_back(result.output.path, unsafe)
        if output is None:
            result.hide_output()
    return result


def sparsify(model, method=None, delta=None, sparsity=None, dconv=None, dfc=None, include=(), exclude=(),
             layers=(), min_size=None, plan=None, dry_run=False, pack=False, data=None, groups=None, pattern=None,
             codec="auto", values="float32", output=None, force=False, order_file=None, progress=False,
             unsafe=False):
    """Zero small weights per layer, no retraining (`wcompress sparsify`; see docs/methods.md)."""
    from .io import open_model
    from .io.container import ContainerWriter
    from .plan import pattern_selection, read_plan, write_plan
    from .plugins import get_pass
    from .runner import dry_run as simulate
    from .runner import run_passes

    plan, order_file, output = _fspath(plan), _fspath(order_file), _fspath(output)
    plan_thresholds = None
    if plan and not dry_run:
        plan_method, plan_thresholds = read_plan(plan)
        method = method or plan_method
        if "pattern" in plan_thresholds:  # N:M on the plan's tensors, nothing else
            if pattern or include or exclude or min_size is not None:
                raise WcompressError("a pattern plan names its pattern and tensors: leave out --pattern, --include, "
                                     "--exclude and --min-size")
            selected = pattern_selection(plan_thresholds)
            pattern, include, min_size = selected["pattern"], selected["include"], selected["min_size"]
            plan_thresholds = None
    if not method:
        raise WcompressError("--method is required (flat, triangular or relative)")
    template = get_pass(method)
    if getattr(template, "family", None) != "sparsify":
        raise WcompressError(f"{method!r} is not a sparsification method")
    calibrated = getattr(template, "needs_calibration", False)
    if (data is not None or groups) and not calibrated:
        raise WcompressError(f"--data and --groups are for methods scored by calibration inputs (wanda, sparsegpt), "
                             f"not {method}")
    options = dict(delta=delta, dconv=dconv, dfc=dfc, sparsity=sparsity, include=include, exclude=exclude,
                   layers=layers, plan=plan_thresholds, min_size=min_size)
    extra = {"pattern": pattern} if pattern else {}  # only then: a plugin's method need not know patterns
    with _as_path(model) as (path, folder):
        if calibrated:
            extra["groups"] = groups or "row"
            template.new(**options, **extra)  # options refused before calibrating
            if data is None:
                raise WcompressError(f"{method} scores weights by their inputs: give calibration inputs with --data "
                                     "CALIB.npz")
            extra["hessians"] = _hessians(path, data, progress)
        sparsifier = template.new(**options, **extra)
        store = open_model(path, order_file=order_file)
        if dry_run:
            outcomes = simulate(store, [sparsifier], show_progress=progress)
            if plan:
                write_plan(plan, sparsifier.plan_document(), force=force)
            from .runner import destruction_findings

            return SparsifyResult(sparsifier.summary(), outcomes, warnings=destruction_findings(outcomes))
        group_sizes = (sparsifier.pattern[1],) if getattr(sparsifier, "pattern", None) else ()
        writer = ContainerWriter(store, values=values, codec=codec, group_sizes=group_sizes) if pack else None
        if pack and folder is not None and output is None:
            raise WcompressError("a container of an in-memory model needs output=PATH.h5")
        result = run_passes(store, [sparsifier], _destination(output, folder), force=force, show_progress=progress,
                            writer=writer, tag="sparse")
        _with_model(result, output, folder, unsafe)
        return SparsifyResult(result.summaries[sparsifier.name], result.tensors, result, result.warnings, result.model)


def _hessians(path, data, progress):
    from .io.capture import input_hessians

    if progress:  # opt-in progress: the caller's callback, or a line on stderr
        shown = data if isinstance(data, (str, os.PathLike)) else "the calibration data"
        (progress if callable(progress) else _to_stderr)(f"calibrating on {shown} …")
    return input_hessians(path, as_examples(data), show_progress=bool(progress))


def _to_stderr(message):
    import sys

    print(message, file=sys.stderr)


def pack(model, output=None, values="float32", codec="auto", data=None, force=False, order_file=None,
         progress=False):
    """Write the sparse container: each tensor in its smallest encoding (`wcompress pack`)."""
    from .io import open_model
    from .io.container import ContainerWriter
    from .runner import run_passes

    output = _fspath(output)
    if data is not None and values not in ("int8", "int4"):
        raise WcompressError("--data calibrates int8/int4 codes: add --values int8 or int4")
    with _as_path(model) as (path, folder):
        if folder is not None and output is None:
            raise WcompressError("a container of an in-memory model needs output=PATH.h5")
        store = open_model(path, order_file=order_file)
        writer = ContainerWriter(store, values=values, codec=codec,
                                 hessians=_hessians(path, data, progress) if data is not None else None)
        return run_passes(store, [], output, force=force, show_progress=progress, writer=writer, tag="packed")


@dataclass
class RestoreResult:
    """restore: the container read and the model written back in its original format."""

    container: str
    format: str
    output: str
    output_files: list
    output_bytes: int
    container_bytes: int
    model: object = None  # with load=True: the restored Keras model

    def to_dict(self):
        return {"container": self.container, "format": self.format, "output": self.output,
                "output_files": self.output_files, "output_bytes": self.output_bytes,
                "container_bytes": self.container_bytes}


def restore(container, output=None, force=False, unsafe=False, load=False):
    """A container back in its original format (`wcompress restore`); `load=True` also returns the Keras
    model it holds as `result.model`."""
    from .io.container import ContainerStore
    from .io.container import restore as write_restored

    container = os.fspath(container)
    source = ContainerStore(container)
    written = write_restored(container, _fspath(output), force=force, unsafe=unsafe)
    result = RestoreResult(container, source.source_format, written.path, written.files, written.bytes, source.bytes)
    if load:
        if source.source_format not in ("keras", "keras-h5"):
            raise WcompressError(f"load=True gives back Keras models; this container holds a {source.source_format}",
                                 container)
        result.model = _load_back(written.path, unsafe)
    return result
