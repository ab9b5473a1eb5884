"""A variant is a model with one sparsification applied; scoring one, possibly in worker processes.

Variants are applied in memory to a model loaded once per process (see scoring.py); the outputs are
the same, to the last digit, as writing the variant with `sparsify` and loading it stock. `jobs` > 1
scores variants in spawned worker processes, each loading the data and the model once; results come
back in the order asked, so any number of jobs gives the same rows.
"""

import os
import tempfile
from dataclasses import dataclass

import numpy as np

from ..errors import WcompressError
from ..io.child import WorkerPool
from ..io import TRAINING_STATE, write_safely
from ..runner import run_in_memory
from .scoring import RAM, Evaluator


@dataclass(frozen=True)
class Variant:
    """`options` are the pass's configure() keywords as sorted (key, value) pairs (a plan as pairs too)."""

    model: str
    method: str
    options: tuple = ()
    pack: bool = False  # also measure the packed container's bytes (training state dropped)
    delta: float = None  # for display: the δ a sweep row stands for
    # How the container stores values (float32, float16, int8, int4): the variant is evaluated with the
    # values a restore of that container gives, and its packed bytes are that container's.
    values: str = "float32"
    calibration: str = None  # DATA.npz whose inputs make int8/int4 codes GPTQ-rounded
    value_plan: tuple = ()  # (tensor name, values) pairs stored otherwise than `values`

    @classmethod
    def of(cls, model, method, pack=False, values="float32", calibration=None, value_plan=None, **options):
        if options.get("plan") is not None:
            options["plan"] = tuple(sorted(options["plan"].items()))
        shown = options.get("delta", options.get("dconv"))
        value_plan = tuple(sorted((value_plan or {}).items()))
        quantized = {values, *(v for _, v in value_plan)} & {"int8", "int4"}
        if needs_calibration(method) and calibration is None:
            raise WcompressError(f"{method} scores weights by calibration inputs: give them with --calibration "
                                 "CALIB.npz")
        return cls(model, method, tuple(sorted((k, v) for k, v in options.items() if v not in (None, ()))),
                   pack, shown, values, calibration if quantized or needs_calibration(method) else None,
                   value_plan)

    @property
    def quantized(self):
        """Whether int8/int4 codes are stored (calibration then also rounds them)."""
        return bool({self.values, *(v for _, v in self.value_plan)} & {"int8", "int4"})

    def sparsifier(self, spec=None):
        """The configured pass; a method scored by calibration inputs gets this process's statistics."""
        from ..plugins import get_pass

        options = dict(self.options)
        if "plan" in options:
            options["plan"] = dict(options["plan"])
        if needs_calibration(self.method):
            options["hessians"] = calibration_hessians(self, spec)
        return get_pass(self.method).new(**options)


def needs_calibration(method):
    from ..plugins import get_pass

    return bool(getattr(get_pass(method), "needs_calibration", False))


def sparsity_of(outcomes):
    """Zeros over all model weights (training state and dropped tensors aside), as `sparsify` counts."""
    model = [o for o in outcomes if o.role not in TRAINING_STATE and not o.dropped]
    return sum(o.zeros for o in model) / max(1, sum(o.size for o in model))


def score_variant(variant, spec):
    """Apply the variant to this process's loaded model, run the data, measure; packed bytes if asked."""
    evaluator = evaluator_for(spec)
    loaded = evaluator.loaded(variant.model)
    sparsifier = variant.sparsifier(spec)
    outcomes, changed = run_in_memory(loaded.store, [sparsifier])
    hessians = calibration_hessians(variant, spec) if variant.quantized else None
    stored = with_values(loaded.store, changed, variant.values, hessians, dict(variant.value_plan))
    if loaded.supports(stored):
        predictions = loaded.predict(stored, evaluator.data, spec.batch_size)
    else:
        predictions = _predict_from_file(evaluator, loaded.store, stored)
    summary = sparsifier.summary()
    return {"method": variant.method, "delta": variant.delta, "pattern": dict(variant.options).get("pattern"),
            "values": variant.values,
            "sparsity": sparsity_of(outcomes), "value": evaluator.score(predictions),
            "packed_bytes": packed_bytes(loaded.store, changed, variant.values, hessians, dict(variant.value_plan))
            if variant.pack else None,
            "sparsified_zeros": summary.get("zeros"), "sparsified_params": summary.get("eligible_params"),
            "skipped_small": len(summary.get("skipped_small") or ())}


def _produce(store, changed):
    return lambda info: changed[info.name] if info.name in changed else store.load(info.name)


def _predict_from_file(evaluator, store, changed):
    """The sure way: write the variant into RAM in the input's format and load it with the stock loader."""
    with tempfile.TemporaryDirectory(dir=RAM) as work:
        checkpoint = store.format.endswith("checkpoint")
        name = "model.ckpt" if checkpoint else os.path.basename(os.path.normpath(store.path))
        written = write_safely(store, os.path.join(work, "v", name), _produce(store, changed))
        return evaluator.predict(written.path)


def packed_bytes(store, changed, values="float32", hessians=None, value_plan=None):
    """Bytes of the sparse container of the model without its training state, written in RAM and measured."""
    from ..io.container import ContainerWriter

    produce = _produce(store, changed)
    with tempfile.TemporaryDirectory(dir=RAM) as work:
        written = write_safely(store, os.path.join(work, "c.h5"),
                               lambda info: None if info.role in TRAINING_STATE else produce(info),
                               writer=ContainerWriter(store, values=values, hessians=hessians,
                                                      value_plan=value_plan))
        return written.bytes


def with_values(store, changed, values, hessians=None, value_plan=None):
    """The tensors as a container storing `values` (per tensor: `value_plan`) restores them: `changed` plus
    every float tensor the container would store in fewer bits (float16, or int8/int4 codes dequantized)."""
    value_plan = value_plan or {}
    if values == "float32" and not value_plan:
        return changed
    from ..quantization import restored_values

    out = dict(changed)
    for info in store.tensors:
        chosen = value_plan.get(info.name, values)
        if info.role in TRAINING_STATE or np.dtype(info.dtype).kind != "f" or chosen == "float32":
            continue
        array = changed.get(info.name)
        array = store.load(info.name) if array is None else array
        out[info.name] = restored_values(array, chosen, (hessians or {}).get(info.name))
    return out


_hessians = {}


def calibration_hessians(variant, spec):
    """The kernels' input statistics on the variant's calibration data, computed once per process."""
    if variant.calibration is None:
        return None
    key = (variant.model, variant.calibration)
    if key not in _hessians:
        from ..io.capture import input_hessians

        options = {} if spec is None else dict(
            input_names=spec.input_names or None, output_name=spec.output_name, feeds=spec.feeds,
            unsafe=spec.unsafe, custom_objects=spec.custom_objects, model_code=spec.model_code)
        _hessians.clear()
        _hessians[key] = input_hessians(variant.model, variant.calibration, **options)
    return _hessians[key]


def dense_score(model, spec):
    """The unchanged model's score (predicted by the same loaded model the variants use)."""
    evaluator = evaluator_for(spec)
    loaded = evaluator.loaded(model)
    return evaluator.score(loaded.predict({}, evaluator.data, spec.batch_size)), evaluator.metric


# --- processes ------------------------------------------------------------------------------------

_evaluators = {}


def evaluator_for(spec):
    """This process's evaluator for `spec` (data and models loaded once)."""
    if spec not in _evaluators:
        if len(_evaluators) >= 4:  # a tuning part, a held-out part, …: keep a few, not every one ever used
            _evaluators.pop(next(iter(_evaluators)))
        _evaluators[spec] = Evaluator(spec)
    return _evaluators[spec]


def _score_in_worker(job):
    variant, spec = job
    return score_variant(variant, spec)


def open_pool(spec, jobs=1, cluster=None, paths=()):
    """Where variants are scored: this process or `jobs` local processes (Pool), or a Ray cluster
    (cluster.RayPool, given a cluster.Cluster; `paths` are the files its workers need besides the spec's)."""
    if cluster is None:
        return Pool(spec, jobs)
    if jobs != 1:
        raise WcompressError("--jobs and --ray both say where to evaluate: give one (--ray-cpus-per-worker sets "
                             "how many workers a Ray node runs)")
    from .cluster import RayPool

    return RayPool(spec, cluster, paths)


class Pool:
    """Scores variants in order, in this process or in `jobs` spawned workers kept for the whole run."""

    def __init__(self, spec, jobs=1):
        self.spec, self.jobs, self._executor = spec, max(1, int(jobs)), None
        if jobs < 1:
            raise WcompressError(f"--jobs must be 1 or more, got {jobs}")

    def __enter__(self):
        if self.jobs > 1:
            self._pool = WorkerPool(self.jobs)
            self._executor = self._pool.__enter__()
        return self

    def __exit__(self, *exc):
        if self._executor is not None:
            self._pool.__exit__(*exc)

    def describe(self):
        return {"backend": "processes", "workers": self.jobs}

    def dense(self, model, spec=None):
        """The unchanged model's score (in this process)."""
        return dense_score(model, spec or self.spec)[0]

    def score(self, variants, advance=None, spec=None):
        """Rows for `variants`, in their order; advance(row) after each."""
        spec = spec or self.spec
        if self._executor is None:
            rows = []
            for v in variants:
                rows.append(score_variant(v, spec))
                if advance:
                    advance(rows[-1])
            return rows
        rows = []
        for row in self._executor.map(_score_in_worker, [(v, spec) for v in variants]):
            rows.append(row)
            if advance:
                advance(row)
        return rows
