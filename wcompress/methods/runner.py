"""Runs passes over a model, one tensor in memory at a time, and writes the result safely."""

from dataclasses import dataclass, field

import numpy as np

from wcompress.errors import warn
from wcompress.formats import TRAINING_STATE, open_model, write_safely
from wcompress.methods.passes import TensorSource
from wcompress.progress import tensor_progress


@dataclass
class TensorOutcome:
    name: str
    layer: str
    role: str
    size: int
    dtype: str
    zeros: int
    dropped: bool = False
    zeros_before: int = 0


@dataclass
class RunResult:
    input_path: str
    input_format: str
    input_bytes: int
    output: object  # io.WriteResult
    tensors: list = field(default_factory=list)
    summaries: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    model: object = None  # the API's result for an in-memory Keras model: a new keras.Model

    @property
    def output_bytes(self):
        return self.output.bytes if self.output is not None else self._measured

    def hide_output(self):
        """The output was a private temporary file (an in-memory model's): keep its size, forget its place."""
        self._measured, self.output = self.output.bytes, None

    def to_dict(self):
        return self.as_dict()

    def as_dict(self):
        return {
            "input": self.input_path,
            "format": self.input_format,
            "input_bytes": self.input_bytes,
            "output": self.output.path if self.output is not None else None,
            "output_files": self.output.files if self.output is not None else [],
            "output_bytes": self.output_bytes,
            "saved_bytes": self.input_bytes - self.output_bytes,
            "passes": self.summaries,
            "warnings": self.warnings,
            "tensors": [t.__dict__ for t in self.tensors],
        }


DRY_RUN_HINT = "check the thresholds with --dry-run"


def run_passes(store, passes, dest, force=False, show_progress=True, writer=None, extra_inputs=(), check=None,
               tag="out", unsafe=False, hint=DRY_RUN_HINT):
    """Prepare every pass, then stream tensors from the store through the passes into the writer
    (the store's own format, or e.g. a ContainerWriter). `hint`: what the warning about a pass that zeroed
    nearly everything tells the user to do (an option of the command that ran it)."""
    if not hasattr(store, "tensors"):
        store = open_model(store)
    source = TensorSource(store)
    for p in passes:
        p.prepare(source)
    outcomes = []
    with tensor_progress(store.tensors, "writing", enabled=show_progress) as advance:
        written = write_safely(store, dest, lambda info: _through(store, passes, info, outcomes, advance),
                               force=force, writer=writer, extra_inputs=extra_inputs, check=check, tag=tag,
                               unsafe=unsafe)
    return RunResult(store.path, store.format, store.bytes, written, outcomes, {p.name: p.summary() for p in passes},
                     destruction_warnings(outcomes, hint))


def dry_run(store, passes, show_progress=True):
    """Run the passes over every tensor in memory, write nothing; return per-tensor outcomes."""
    source = TensorSource(store)
    for p in passes:
        p.prepare(source)
    outcomes = []
    with tensor_progress(store.tensors, "computing", enabled=show_progress) as advance:
        for info in store.tensors:
            _through(store, passes, info, outcomes, advance)
    destruction_warnings(outcomes, "these thresholds are probably on the wrong scale")
    return outcomes


# A pass that leaves a weight tensor or the whole model (nearly) all zeros has almost always been
# given a threshold on the wrong scale: say so, although the command did what it was asked.
TENSOR_ZEROS_WARNING = 0.95
MODEL_ZEROS_WARNING = 0.90


def destruction_warnings(outcomes, hint=DRY_RUN_HINT):
    """Warn (stderr, and the returned list for --json) where a pass zeroed nearly everything."""
    found = destruction_findings(outcomes)
    if found:
        shown = "; ".join(found[:4]) + (f"; and {len(found) - 4} more tensors" if len(found) > 4 else "")
        warn(f"{shown}: {hint}")
    return found


def destruction_findings(outcomes):
    found = []
    weights = [o for o in outcomes if not o.dropped and o.role not in TRAINING_STATE and o.size]
    for o in weights:
        if o.zeros > o.zeros_before and o.zeros > TENSOR_ZEROS_WARNING * o.size:
            found.append(f"{tensor_label(o)} is now {100 * o.zeros / o.size:.1f}% zeros")
    size = sum(o.size for o in weights)
    zeros, before = sum(o.zeros for o in weights), sum(o.zeros_before for o in weights)
    if size and zeros > before and zeros > MODEL_ZEROS_WARNING * size:
        found.insert(0, f"the model is now {100 * zeros / size:.1f}% zeros")
    return found


def tensor_label(tensor):
    """A tensor named as summaries name it, by its layer: `fc1/kernel` when its name says that already,
    else `block1_conv1 kernel (layers/conv2d_12/vars/0)` (Keras files name variables by position)."""
    if not tensor.layer or tensor.name.startswith(tensor.layer + "/") or tensor.name == tensor.layer:
        return tensor.name
    return f"{tensor.layer} {tensor.role} ({tensor.name})"


def _through(store, passes, info, outcomes, advance):
    """Load one tensor, run it through the passes, record what came out."""
    advance.starting(info)
    array = store.load(info.name)
    before = _zeros(array)
    for p in passes:
        array = p.apply(info, array)
        if array is None:
            break
    outcomes.append(_outcome(info, array, before))
    advance(info)
    return array


def _zeros(array):
    return int(array.size - np.count_nonzero(array)) if array is not None and array.dtype != object else 0


def _outcome(info, array, zeros_before):
    if array is None:
        return TensorOutcome(info.name, info.layer, info.role, info.size, str(np.dtype(info.dtype)), 0, dropped=True,
                             zeros_before=zeros_before)
    return TensorOutcome(info.name, info.layer, info.role, int(array.size), str(array.dtype), _zeros(array),
                         zeros_before=zeros_before)


class CachedStore:
    """A store whose tensors are read once and then served read-only from memory, so that many variants
    of one model (sweep, autotune) cost no further reads. Passes copy before writing (read-only arrays)."""

    def __init__(self, store):
        self._store = store
        self._arrays = {}
        self.tensors = store.tensors

    def load(self, name):
        if name not in self._arrays:
            array = self._store.load(name)
            array.flags.writeable = False
            self._arrays[name] = array
        return self._arrays[name]

    def __getattr__(self, attr):
        return getattr(self._store, attr)


def run_in_memory(store, passes):
    """Run the passes over every tensor in memory; return (outcomes, {name: array} of the tensors the passes
    changed or dropped (None)). With a CachedStore, an unchanged tensor is the cached array itself."""
    source = TensorSource(store)
    for p in passes:
        p.prepare(source)
    outcomes, changed = [], {}
    for info in store.tensors:
        original = store.load(info.name)
        array = original
        for p in passes:
            array = p.apply(info, array)
            if array is None:
                break
        outcomes.append(_outcome(info, array, _zeros(original)))
        if array is not original:
            changed[info.name] = array
    return outcomes, changed
