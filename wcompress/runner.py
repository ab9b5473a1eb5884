"""Runs passes over a model, one tensor in memory at a time, and writes the result safely."""

from dataclasses import dataclass, field

import numpy as np

from .io import open_model, write_safely
from .passes import TensorSource
from .progress import tensor_progress


@dataclass
class TensorOutcome:
    name: str
    layer: str
    role: str
    size: int
    dtype: str
    zeros: int
    dropped: bool = False


@dataclass
class RunResult:
    input_path: str
    input_format: str
    input_bytes: int
    output: object  # io.WriteResult
    tensors: list = field(default_factory=list)
    summaries: dict = field(default_factory=dict)

    @property
    def output_bytes(self):
        return self.output.bytes

    def as_dict(self):
        return {
            "input": self.input_path,
            "format": self.input_format,
            "input_bytes": self.input_bytes,
            "output": self.output.path,
            "output_files": self.output.files,
            "output_bytes": self.output_bytes,
            "saved_bytes": self.input_bytes - self.output_bytes,
            "passes": self.summaries,
            "tensors": [t.__dict__ for t in self.tensors],
        }


def run_passes(store, passes, dest, force=False, show_progress=True, writer=None, extra_inputs=(), check=None,
               tag="out"):
    """Prepare every pass, then stream tensors from the store through the passes into the writer
    (the store's own format, or e.g. a ContainerWriter)."""
    if not hasattr(store, "tensors"):
        store = open_model(store)
    source = TensorSource(store)
    for p in passes:
        p.prepare(source)
    outcomes = []
    with tensor_progress(store.tensors, "writing", enabled=show_progress) as advance:
        written = write_safely(store, dest, lambda info: _through(store, passes, info, outcomes, advance),
                               force=force, writer=writer, extra_inputs=extra_inputs, check=check, tag=tag)
    return RunResult(store.path, store.format, store.bytes, written, outcomes, {p.name: p.summary() for p in passes})


def dry_run(store, passes, show_progress=True):
    """Run the passes over every tensor in memory, write nothing; return per-tensor outcomes."""
    source = TensorSource(store)
    for p in passes:
        p.prepare(source)
    outcomes = []
    with tensor_progress(store.tensors, "computing", enabled=show_progress) as advance:
        for info in store.tensors:
            _through(store, passes, info, outcomes, advance)
    return outcomes


def _through(store, passes, info, outcomes, advance):
    """Load one tensor, run it through the passes, record what came out."""
    array = store.load(info.name)
    for p in passes:
        array = p.apply(info, array)
        if array is None:
            break
    outcomes.append(_outcome(info, array))
    advance(info)
    return array


def _outcome(info, array):
    if array is None:
        return TensorOutcome(info.name, info.layer, info.role, info.size, str(np.dtype(info.dtype)), 0, dropped=True)
    zeros = int(array.size - np.count_nonzero(array)) if array.dtype != object else 0
    return TensorOutcome(info.name, info.layer, info.role, int(array.size), str(array.dtype), zeros)
