"""The commands that score models on data: evaluate, sweep, autotune, compress, ensemble_search.

Every one takes the evaluation options `wcompress evaluate` takes (as keyword arguments: `reference`,
`input_names`, `output_name`, `feeds`, `batch_size`, `unsafe`, `custom_objects`, `model_code`); data is a
.npz path (or module:function), an array, an (x, y) tuple or a dict of named inputs."""

from wcompress.errors import WcompressError
from wcompress.api.inputs import Inputs, bars, fspath, load_back
from wcompress.api.results import DocumentResult, EvaluateResult


def _spec(given, data, metric, reference=None, input_names=(), output_name=None, feeds=(), batch_size=256,
          unsafe=False, custom_objects=None, model_code=None):
    from wcompress.workflows import EvalSpec

    if custom_objects is not None and not isinstance(custom_objects, str):
        raise WcompressError("custom_objects takes what --custom-objects takes: FILE.py, a module or module:attr "
                             "(worker processes import it by name)")
    return EvalSpec(data=_data(given, data), metric=metric, reference=given.model(reference, "reference"),
                    input_names=tuple(input_names), output_name=output_name, feeds=tuple(feeds), unsafe=unsafe,
                    batch_size=batch_size, custom_objects=custom_objects, model_code=model_code)


def _data(given, data):
    if data is None:
        raise WcompressError("data is required: a .npz path, an array, an (x, y) tuple or a dict of named inputs")
    return given.data(data)


def _tuning_spec(given, path, data, metric, **options):
    """sweep and autotune: with no metric, unlabelled data is scored by fidelity to the input model; a
    fidelity metric with no reference compares to the input model."""
    from wcompress.workflows import default_metric
    from wcompress.workflows.metrics import get_metric

    data = _data(given, data)
    spec = _spec(given, data, metric or default_metric(data), **options)
    if not spec.reference and get_metric(spec.metric).needs == "reference":
        from dataclasses import replace

        spec = replace(spec, reference=path)
    return spec


def _cluster(ray, ray_cpus_per_worker, ray_workers):
    """`ray`: None (local processes), 'local' (a new local Ray instance), 'auto' or 'ray://HOST:PORT'."""
    if ray is None:
        if ray_workers is not None or ray_cpus_per_worker != 1.0:
            raise WcompressError("--ray-workers and --ray-cpus-per-worker go with --ray")
        return None
    from wcompress.workflows.cluster import Cluster

    return Cluster(address=None if ray == "local" else ray, cpus_per_worker=ray_cpus_per_worker, workers=ray_workers)


def evaluate(model, data, metrics=None, progress=False, metric=None, **options):
    """Run the model on the data and score it (`wcompress evaluate`): accuracy, GAP@20, AUC, MSE, or, with
    `reference=`, fidelity to a reference model (the default metrics then: fidelity, cosine, maxdiff).
    `metrics`: one name or several (`metric=` is the same, as the other functions spell it)."""
    from wcompress.workflows import Evaluator

    if metric is not None and metrics is not None:
        raise WcompressError("give metric= or metrics=, not both")
    metrics = metrics if metric is None else metric
    metrics = [metrics] if isinstance(metrics, str) else list(metrics or ())
    if not metrics:
        if not options.get("reference"):
            raise WcompressError("--metric is required (or --reference for fidelity metrics)")
        metrics = ["fidelity", "cosine", "maxdiff"]
    with Inputs() as given:
        path = given.model(model)
        results, predictions = [], None
        for name in metrics:
            evaluator = Evaluator(_spec(given, data, name, **options))
            if predictions is None:
                predictions = evaluator.predict(path, show_progress=bars(progress))
            results.append({"metric": name, "value": evaluator.score(predictions)})
        return EvaluateResult(given.scrub(path), int(predictions.shape[0]), results, tuple(predictions.shape[1:]))


def sweep(model, data, metric=None, methods=("flat", "triangular", "relative"), deltas=None, include=(), exclude=(),
          min_size=None, layers=(), patterns=(), acceptable=0.95, jobs=1, values=("float32",), calibration=None,
          ray=None, ray_cpus_per_worker=1.0, ray_workers=None, progress=False, **options):
    """For each method and δ (and each way of storing values): sparsify, evaluate, record sparsity, the
    metric and packed bytes (`wcompress sweep`). `deltas`: the --deltas text, or {method: [δ, …]}."""
    from wcompress.workflows import parse_grids
    from wcompress.workflows import sweep as run_sweep
    from wcompress.methods.pruning import parse_pattern

    methods = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    patterns = [p.strip() for p in (patterns.split(",") if isinstance(patterns, str) else patterns) if p.strip()]
    for p in patterns:
        parse_pattern(p)  # refused before any evaluation
    grids = deltas if isinstance(deltas, dict) else parse_grids(deltas, methods)
    missing = [m for m in methods if m not in grids]
    if missing:
        raise WcompressError(f"deltas names no values for {', '.join(missing)}")
    values = (values,) if isinstance(values, str) else tuple(values)
    with Inputs() as given:
        path = given.model(model)
        spec = _tuning_spec(given, path, data, metric, **options)
        selection = {"include": tuple(include), "exclude": tuple(exclude), "layers": tuple(layers),
                     "min_size": min_size}
        document = run_sweep(path, methods, grids, spec, jobs, acceptable, selection, show_progress=bars(progress),
                             values=values, calibration=given.data(calibration, "calibration"), patterns=patterns,
                             cluster=_cluster(ray, ray_cpus_per_worker, ray_workers))
        return DocumentResult(given.scrub(document))


def autotune(model, data, max_drop, metric=None, relative=True, holdout=0.3, validation=None, target="sparsity",
             methods=None, include=(), exclude=(), min_size=None, output=None, pack=False, values="float32", plan=None,
             max_layers=None, max_evals=500, jobs=1, force=False, pattern=None, calibration=None, ray=None,
             ray_cpus_per_worker=1.0, ray_workers=None, best_effort=False, time_limit=None, progress=False,
             **options):
    """The sparsest model (or, `target="bytes"`, smallest container) within `max_drop`, judged on examples
    the search never saw (`wcompress autotune`). Writes the model to `output` and its plan beside it
    (`plan=`: elsewhere); for an in-memory model without `output`, `result.model` is the tuned model and
    `result.plan_document` its plan. `values`: one width or several (float32, float16, int8, int4) with
    `pack=True`. `best_effort=True`: when no state meets the budget, the closest one is written (its
    `tuned.within_budget` is False) instead of raising. `time_limit`: as compress's."""
    from wcompress.workflows import autotune as run_autotune
    from wcompress.workflows.compress import parse_duration

    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    with Inputs() as given:
        path = given.model(model)
        destination = given.output(fspath(output), "tuned.h5" if pack else "tuned.keras")
        if destination is None:
            raise WcompressError("autotune writes the tuned model: give output=PATH")
        plan_path = fspath(plan) or destination.rstrip("/") + ".plan.json"
        spec = _tuning_spec(given, path, data, metric, **options)
        document = run_autotune(path, spec, max_drop, destination, plan_path, relative, jobs, force, methods=methods,
                                holdout=holdout, validation=given.data(validation, "validation"), target=target,
                                selection={"include": tuple(include), "exclude": tuple(exclude),
                                           "min_size": min_size},
                                max_layers=max_layers, max_evals=max_evals, pack=pack, values=values,
                                calibration=given.data(calibration, "calibration"), show_progress=bars(progress),
                                pattern=pattern, cluster=_cluster(ray, ray_cpus_per_worker, ray_workers),
                                best_effort=best_effort, time_limit=parse_duration(time_limit))
        keras_file = document["output"].endswith((".keras", ".h5")) and not pack
        return _tuned(given, document, keras_file, options.get("unsafe", False))


def _tuned(given, document, keras_file, unsafe):
    """autotune and compress: for an in-memory model, the tuned Keras model loaded back and the plan read
    before the private files go."""
    result = DocumentResult(document)
    if given.in_memory:
        if keras_file:
            result.model = load_back(document["output"], unsafe)
        if document.get("plan") and given.is_private(document["plan"]):
            import json

            with open(document["plan"]) as fh:
                document["plan_document"] = json.load(fh)
        result.document = given.scrub(document)
    return result


def ensemble_search(models, data, metric, budget, dtype="float32", top=10, min_members=1, jobs=1, ray=None,
                    ray_cpus_per_worker=1.0, ray_workers=None, **options):
    """Ensemble members and output weights that maximise the metric under a size budget (`wcompress
    ensemble-search`): the combinations tried, best first, and the `wcompress merge` command for the best.
    `budget`: bytes, or text such as '1GB'."""
    from wcompress.workflows import ensemble_search as run_search
    from wcompress.workflows import merge_command
    from wcompress.workflows.merge import parse_size

    with Inputs() as given:
        paths = [given.model(m, f"member{i}") for i, m in enumerate(models)]
        spec = _spec(given, data, metric, **options)
        budget = budget if isinstance(budget, int) else parse_size(str(budget))
        document = run_search(paths, spec, budget, dtype, jobs, top, min_members=min_members,
                              cluster=_cluster(ray, ray_cpus_per_worker, ray_workers))
        best = document["combinations"][0]
        keras_output = all(m.endswith((".keras", ".h5", ".hdf5")) for m in best["members"])
        document["merge_command"] = merge_command(best, dtype, spec, "ensemble.keras" if keras_output else "ensemble/")
        return DocumentResult(given.scrub(document))


def compress(model, data, max_drop, metric=None, output=None, relative=True, holdout=0.3, validation=None,
             no_holdout=False, time_limit=None, max_evals=500, jobs=1, force=False, plan=None, ray=None,
             ray_cpus_per_worker=1.0, ray_workers=None, best_effort=False, progress=False, **options):
    """The smallest file within `max_drop` of the model's metric on examples the search never saw
    (`wcompress compress`): the container, every method and value width, per-layer levels; `output=` named
    .keras/.weights.h5/.hdf5/.tflite (or a folder) asks for the best file of that format instead. Too few
    examples to hold a part out is an error unless `validation=` is given, or `no_holdout=True` (the result
    is then labelled unverified). `time_limit`: seconds, or text such as '20m'. Nothing is written when no
    state meets the budget, unless `best_effort=True` (the closest state, `tuned.within_budget` False)."""
    from wcompress.workflows import compress as run_compress
    from wcompress.workflows.compress import parse_duration

    with Inputs() as given:
        path = given.model(model)
        destination = given.output(fspath(output), "compressed.h5")
        spec = _tuning_spec(given, path, data, metric, **options)
        document = run_compress(path, spec, max_drop, destination, plan_path=fspath(plan), relative=relative,
                                holdout=holdout, validation=given.data(validation, "validation"),
                                no_holdout=no_holdout, jobs=jobs,
                                cluster=_cluster(ray, ray_cpus_per_worker, ray_workers),
                                time_limit=parse_duration(time_limit), max_evals=max_evals, force=force,
                                show_progress=bars(progress), best_effort=best_effort)
        keras_file = document["output_kind"] in ("keras", "keras-h5")
        return _tuned(given, document, keras_file, options.get("unsafe", False))
