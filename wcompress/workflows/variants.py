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

from wcompress.errors import WcompressError
from wcompress.formats import TRAINING_STATE, open_model, write_safely
from wcompress.methods.runner import run_in_memory
from wcompress.workflows.scoring import RAM, Evaluator


@dataclass(frozen=True)
class Variant:
    """`options` are the pass's configure() keywords as sorted (key, value) pairs (a plan as pairs too)."""

    model: str
    method: str
    options: tuple = ()
    pack: bool = False  # also measure the packed container's bytes (training state dropped)
    delta: float = None  # for display: the δ a sweep row stands for
    # How the container stores values (float32, float16, int8, int4, ecq:QP): the variant is evaluated with the
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
        quantized = _quantized({values, *(v for _, v in value_plan)})
        if needs_calibration(method) and calibration is None:
            raise WcompressError(f"{method} scores weights by calibration inputs: give them with --calibration "
                                 "CALIB.npz")
        return cls(model, method, tuple(sorted((k, v) for k, v in options.items() if v not in (None, ()))),
                   pack, shown, values, calibration if quantized or needs_calibration(method) else None,
                   value_plan)

    @property
    def quantized(self):
        """Whether int8/int4 codes are stored (calibration then also rounds them)."""
        return _quantized({self.values, *(v for _, v in self.value_plan)})

    def sparsifier(self, spec=None):
        """The configured pass; a method scored by calibration inputs gets this process's statistics."""
        from wcompress.plugins import get_pass

        options = dict(self.options)
        if "plan" in options:
            options["plan"] = dict(options["plan"])
        if needs_calibration(self.method):  # wanda and sparsegpt score the dense model's inputs
            options["hessians"] = model_hessians(self.model, self.calibration, spec)
        return get_pass(self.method).new(**options)


def _quantized(values):
    """Whether any of these value settings stores integer codes (int8, int4, ecq:QP), which calibration rounds;
    a malformed setting is refused here, before any evaluation."""
    from wcompress.formats.container.quantization import stores_codes

    return any(stores_codes(v) for v in values)


def needs_calibration(method):
    from wcompress.plugins import get_pass

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
            "skipped_small": len(summary.get("skipped_small") or ()),
            **({"resampled": evaluator.resampled(predictions).tolist()} if spec.resamples else {})}


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
    from wcompress.formats.container import ContainerWriter

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
    from wcompress.formats.container.quantization import calibrated_source, ecq_unit, restored_values

    out = dict(changed)
    for info in store.tensors:
        chosen = value_plan.get(info.name, values)
        if info.role in TRAINING_STATE or np.dtype(info.dtype).kind != "f" or chosen == "float32":
            continue
        array = changed.get(info.name)
        array = calibrated_source(hessians, info.name, store.load(info.name), chosen) if array is None else array
        hessian = (hessians or {}).get(info.name)
        out[info.name] = restored_values(array, chosen, hessian, ecq_unit(hessians, info.name))
    return out


_hessians = {}


def calibration_hessians(variant, spec):
    """The statistics that round the variant's codes (GPTQ), computed once per process: measured layer by
    layer at the variant's uniform values where those store codes (capture.layer_by_layer), as `pack`
    measures them; a per-tensor value plan is rounded with its uniform setting's statistics."""
    if variant.calibration is None:
        return None
    coded = variant.values if _quantized({variant.values}) else None
    return model_hessians(variant.model, variant.calibration, spec, coded)


def model_hessians(model, calibration, spec, values=None):
    """The kernels' input statistics of `model` on the `calibration` inputs (layer by layer with `values`),
    computed once per process; the dense model's and one setting's are kept."""
    key = (model, calibration, values)
    if key not in _hessians:
        from wcompress.runtime.capture import input_hessians

        options = {} if spec is None else dict(
            input_names=spec.input_names or None, output_name=spec.output_name, feeds=spec.feeds,
            unsafe=spec.unsafe, custom_objects=spec.custom_objects, model_code=spec.model_code)
        floats = {k: h for k, h in _hessians.items() if values is not None and k[2] is None}
        _hessians.clear()
        _hessians.update(floats)  # a setting's statistics replace another's; the float model's stay beside them
        _hessians[key] = input_hessians(model, calibration, sensitivity=True, values=values, **options)
    return _hessians[key]


def dense_score(model, spec, resampled=False):
    """The unchanged model's score (predicted by the same loaded model the variants use); with `resampled`,
    (score, metric, its scores on the spec's bootstrap resamples)."""
    evaluator = evaluator_for(spec)
    loaded = evaluator.loaded(model)
    predictions = loaded.predict({}, evaluator.data, spec.batch_size)
    if resampled:
        return evaluator.score(predictions), evaluator.metric, evaluator.resampled(predictions)
    return evaluator.score(predictions), evaluator.metric


# --- processes ------------------------------------------------------------------------------------

_evaluators = {}


def evaluator_for(spec):
    """This process's evaluator for `spec` (data and models loaded once)."""
    if spec not in _evaluators:
        if len(_evaluators) >= 4:  # a tuning part, a held-out part, …: keep a few, not every one ever used
            _evaluators.pop(next(iter(_evaluators)))
        _evaluators[spec] = Evaluator(spec)
    return _evaluators[spec]


def score_candidate(path_and_dtype):
    """An ensemble candidate: its size as the merge would write it (training state dropped, fp16 if asked) and predictions."""
    from wcompress.plugins import get_pass
    from wcompress.methods.runner import run_passes

    path, dtype, spec = path_and_dtype
    evaluator = evaluator_for(spec)
    store = open_model(path)
    with tempfile.TemporaryDirectory(dir=RAM) as work:
        name = "model.ckpt" if store.format.endswith("checkpoint") else os.path.basename(os.path.normpath(path))
        passes = [get_pass("fp16").new()] if dtype == "float16" else [get_pass("strip").new()]
        written = run_passes(store, passes, os.path.join(work, "w", name), show_progress=False)
        predictions = evaluator.predict(written.output.path)
        return written.output_bytes, predictions
