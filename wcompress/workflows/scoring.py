"""Scoring a model on data: the examples, the metric, the reference, and models held in memory.

A model evaluated many times (sweep, autotune) is loaded once; each variant's tensors are written into
the loaded model's own variables, the data is run, and the next variant starts from the dense values
again. Which variable holds which stored tensor is found by content, so the mechanism knows no format:
a tensor whose values no single variable holds (or that several hold) is evaluated the slow, sure way,
written to a RAM folder and loaded with the stock loader, exactly as `sparsify` would write it.
"""

import os
from dataclasses import dataclass

import numpy as np

from wcompress.errors import WcompressError
from wcompress.formats import open_model
from wcompress.runtime.capture import match_by_content
from wcompress.runtime.data import load_data
from wcompress.runtime.predictors import load_predictor
from wcompress.workflows.metrics import get_metric
from wcompress.methods.runner import CachedStore

RAM = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@dataclass(frozen=True)
class EvalSpec:
    """Everything needed to score a model; plain data, so worker processes can rebuild it."""

    data: str
    metric: str
    reference: str = None
    input_names: tuple = ()
    output_name: str = None
    feeds: tuple = ()
    unsafe: bool = False
    batch_size: int = 256
    custom_objects: str = None  # --custom-objects: FILE.py, module or module:attr
    model_code: str = None  # --model-code module:function, for weights-only files
    examples: tuple = None  # indices of the examples scored (a tuning or held-out part); None: all
    resamples: int = 0  # also score this many bootstrap resamples of the examples (Evaluator.resampled)

    def part(self, examples):
        from dataclasses import replace

        return replace(self, examples=tuple(int(i) for i in examples))


def split_examples(count, holdout, seed=0):
    """(tuning indices, held-out indices): a fixed shuffle, so every run and every worker agrees."""
    if not 0 < holdout < 1:
        raise WcompressError(f"--holdout must be between 0 and 1, got {holdout}")
    held = int(round(count * holdout))
    if held < 1 or count - held < 1:
        raise WcompressError(f"--holdout {holdout} of {count} examples leaves a part empty")
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[held:]), np.sort(order[:held])


class Evaluator:
    def __init__(self, spec):
        self.spec = spec
        data = load_data(spec.data)
        if spec.examples is not None:
            index = np.asarray(spec.examples, dtype=np.int64)
            data = {k: v[index] for k, v in data.items()}
        self.data = data
        self.metric = get_metric(spec.metric)
        self._reference = None
        self._loaded = {}
        if self.metric.needs == "labels" and "y" not in self.data:
            raise WcompressError(f"metric {spec.metric} needs labels: the data has no 'y' array", spec.data)
        if self.metric.needs == "reference" and not spec.reference:
            raise WcompressError(f"metric {spec.metric} compares to a reference model: pass --reference")

    @property
    def examples(self):
        return int(next(v for k, v in self.data.items() if k != "y").shape[0])

    def _predictor(self, path):
        spec = self.spec
        return load_predictor(path, list(spec.input_names) or None, spec.output_name, spec.feeds, spec.unsafe,
                              spec.custom_objects, spec.model_code)

    def predict(self, path, show_progress=False):
        predictor = self._predictor(path)
        try:
            return predictor.predict(self.data, self.spec.batch_size, show_progress)
        finally:
            predictor.close()

    def loaded(self, path):
        """The model at `path`, loaded once in this process for in-memory variants."""
        if path not in self._loaded:
            self._loaded[path] = LoadedModel(path, self._predictor(path))
        return self._loaded[path]

    def truth(self):
        if self.metric.needs == "reference":
            if self._reference is None:
                self._reference = self.predict(self.spec.reference)
            return self._reference
        return self.data["y"]

    def score(self, predictions):
        return float(self.metric.fn(self.truth(), predictions))

    def resampled(self, predictions):
        """The metric on `spec.resamples` bootstrap resamples of the examples (drawn with replacement from a
        fixed seed: every variant and the dense model are scored on the same ones), float64; NaN where a
        resample leaves the metric undefined (one class only, for AUC)."""
        truth, count = self.truth(), len(predictions)
        rng = np.random.default_rng(0)
        out = np.full(self.spec.resamples, np.nan)
        for r in range(self.spec.resamples):
            pick = rng.integers(0, count, count)
            try:
                out[r] = float(self.metric.fn(truth[pick], predictions[pick]))
            except (WcompressError, ValueError, ZeroDivisionError):
                pass
        return out


class LoadedModel:
    """A model loaded once: its stored tensors (read once), and which variable of the loaded model holds
    each of them, matched by exact content."""

    def __init__(self, path, predictor):
        self.path = path
        self.store = CachedStore(open_model(path))
        self.predictor = predictor
        self.handles = match_by_content(self.store, predictor.weights())
        self._assigned = {}  # tensor name -> the array now in its variable, where that is not the dense one

    def supports(self, changed):
        """Whether every tensor a variant changes can be written into the loaded model."""
        return all(name in self.handles and array is not None for name, array in changed.items())

    def predict(self, changed, data, batch_size):
        """Predictions of the model with the `changed` tensors in place of its own."""
        for name in [n for n in self._assigned if n not in changed]:
            self.predictor.assign(self.handles[name], self.store.load(name))
            del self._assigned[name]
        for name, array in changed.items():
            if self._assigned.get(name) is not array:
                self.predictor.assign(self.handles[name], array)
                self._assigned[name] = array
        return self.predictor.predict(data, batch_size)


def default_metric(data):
    """The metric sweep and autotune use when none is named: fidelity to the input model, unless the data
    has labels, which deserve a metric the user chooses."""
    labelled = "y" in load_data(data)
    if labelled:
        raise WcompressError("the data has labels (y): name the metric with --metric (top1, auc, mse, …; or "
                             "fidelity to compare with the input model)", data)
    return "fidelity"
