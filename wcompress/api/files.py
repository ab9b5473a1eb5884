"""The commands that read a model and write one: profile, report, strip, sparsify, pack, restore, quantize,
fp16, average, merge, export."""

import os

from wcompress.errors import WcompressError
from wcompress.api.inputs import Inputs, announce, as_examples, bars, fspath, load_back
from wcompress.api.results import DocumentResult, RestoreResult, SparsifyResult


def profile(model, order_file=None, progress=False):
    """Per-tensor statistics and model totals (`wcompress profile`)."""
    from wcompress.formats import open_model
    from wcompress.workflows.stats import profile_model

    with Inputs() as given:
        document = profile_model(open_model(given.model(model), order_file=fspath(order_file)),
                                 show_progress=bars(progress))
        return DocumentResult(given.scrub(document))


def report(model, against=None, gzip=True):
    """A container's (or model's) bytes per tensor against the information bounds (`wcompress report`)."""
    from wcompress.workflows.reporting import report as build_report

    with Inputs() as given:
        document = build_report(given.model(model), against=given.model(against, "against"), gzip=gzip)
        return DocumentResult(given.scrub(document))


def _finish(result, given, output, unsafe=False, container=False):
    """An in-memory input's RunResult: the model loaded back (not from a container), and no trace of our
    private folder."""
    if given.in_memory:
        result.input_path = None  # the private copy of the caller's model is gone once we return
        if not container and (output is None or result.output.path.endswith((".keras", ".h5"))):
            result.model = load_back(result.output.path, unsafe)
        if output is None:
            result.hide_output()
    return result


def _run(model, passes, output, force, order_file, progress, tag, writer=None, unsafe=False):
    from wcompress.formats import open_model
    from wcompress.methods.runner import run_passes

    with Inputs() as given:
        store = open_model(given.model(model), order_file=fspath(order_file))
        if writer is not None:
            if given.in_memory and output is None:
                raise WcompressError("a container of an in-memory model needs output=PATH.h5")
            writer = writer(store)
        result = run_passes(store, passes, given.output(output), force=force, show_progress=bars(progress),
                            writer=writer, tag=tag)
        return _finish(result, given, output, unsafe, container=writer is not None)


def strip(model, output=None, force=False, order_file=None, progress=False, unsafe=False):
    """Drop optimizer slots, step counters and metric state (`wcompress strip`)."""
    from wcompress.plugins import get_pass

    return _run(model, [get_pass("strip").new()], fspath(output), force, order_file, progress, "stripped",
                unsafe=unsafe)


def stored_values(values, qp=None):
    """The container's values setting from `values` and `qp` ("ecq" with qp N is "ecq:N"), checked."""
    from wcompress.formats.container.quantization import ecq_values, parse_values

    if values == "ecq":
        if qp is None:
            raise WcompressError("--values ecq needs --qp N (larger N: coarser steps, a smaller file)")
        values = ecq_values(qp)
    elif qp is not None and parse_values(values)[0] != "ecq":
        raise WcompressError("--qp sets the step of --values ecq: add --values ecq")
    parse_values(values)  # a malformed or out-of-range QP, before anything is read
    return values


def sparsify(model, method=None, delta=None, sparsity=None, dconv=None, dfc=None, include=(), exclude=(),
             layers=(), min_size=None, plan=None, dry_run=False, pack=False, data=None, groups=None, pattern=None,
             codec="auto", values="float32", output=None, force=False, order_file=None, progress=False,
             unsafe=False, qp=None):
    """Zero small weights per layer, no retraining (`wcompress sparsify`; see docs/methods.md)."""
    from wcompress.formats import open_model
    from wcompress.formats.container import ContainerWriter
    from wcompress.methods.plan import pattern_selection, read_plan, write_plan
    from wcompress.plugins import get_pass
    from wcompress.methods.runner import destruction_findings, run_passes
    from wcompress.methods.runner import dry_run as simulate

    plan, output = fspath(plan), fspath(output)
    values = stored_values(values, qp)
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
    with Inputs() as given:
        path = given.model(model)
        if calibrated:
            extra["groups"] = groups or "row"
            template.new(**options, **extra)  # options refused before calibrating
            if data is None:
                raise WcompressError(f"{method} scores weights by their inputs: give calibration inputs with --data "
                                     "CALIB.npz")
            extra["hessians"] = _hessians(path, data, progress)
        sparsifier = template.new(**options, **extra)
        store = open_model(path, order_file=fspath(order_file))
        if dry_run:
            outcomes = simulate(store, [sparsifier], show_progress=bars(progress))
            if plan:
                write_plan(plan, sparsifier.plan_document(), force=force)
            return SparsifyResult(sparsifier.summary(), outcomes, warnings=destruction_findings(outcomes))
        group_sizes = (sparsifier.pattern[1],) if getattr(sparsifier, "pattern", None) else ()
        writer = ContainerWriter(store, values=values, codec=codec, group_sizes=group_sizes) if pack else None
        if pack and given.in_memory and output is None:
            raise WcompressError("a container of an in-memory model needs output=PATH.h5")
        result = run_passes(store, [sparsifier], given.output(output), force=force, show_progress=bars(progress),
                            writer=writer, tag="sparse")
        _finish(result, given, output, unsafe, container=pack)
        return SparsifyResult(result.summaries[sparsifier.name], result.tensors, result, result.warnings, result.model)


def _hessians(path, data, progress, values=None):
    """The model's calibration statistics; ecq values also measure each kernel's output sensitivity. Where
    `values` stores codes (int8, int4, ecq), each kernel is measured with the kernels before it already coded."""
    from wcompress.formats.container.quantization import parse_values
    from wcompress.runtime.capture import input_hessians

    shown = data if isinstance(data, (str, os.PathLike)) else "the calibration data"
    announce(progress, f"calibrating on {shown} …")
    return input_hessians(path, as_examples(data), show_progress=bars(progress),
                          sensitivity=parse_values(values)[0] == "ecq", values=values)


def pack(model, output=None, values="float32", codec="auto", data=None, force=False, order_file=None,
         progress=False, qp=None):
    """Write the sparse container: each tensor in its smallest encoding (`wcompress pack`). `values="ecq"`
    with `qp` (or values="ecq:QP") stores entropy-coded levels at that quality parameter."""
    from wcompress.formats.container import ContainerWriter
    from wcompress.formats.container.quantization import stores_codes

    values = stored_values(values, qp)
    if data is not None and not stores_codes(values):
        raise WcompressError("--data calibrates int8/int4/ecq codes: add --values int8, int4 or ecq")

    calibrated = []

    def writer(store):
        hessians = _hessians(store.path, data, progress, values) if data is not None else None
        calibrated.append(hessians)
        return ContainerWriter(store, values=values, codec=codec, hessians=hessians)

    result = _run(model, [], fspath(output), force, order_file, progress, "packed", writer=writer)
    fit = getattr(calibrated[0], "fit", None) if calibrated else None
    if fit is not None:  # ecq's vectors fitted to the dense model's outputs (runtime/fitting.py)
        result.summaries["fitted_vectors"] = fit.to_dict()
    return result


def restore(container, output=None, force=False, unsafe=False, load=False):
    """A container back in its original format (`wcompress restore`); `load=True` also returns the Keras
    model it holds as `result.model`."""
    from wcompress.formats.container import ContainerStore
    from wcompress.formats.container import restore as write_restored

    container = os.fspath(container)
    source = ContainerStore(container)
    written = write_restored(container, fspath(output), force=force, unsafe=unsafe)
    result = RestoreResult(container, source.source_format, written.path, written.files, written.bytes, source.bytes)
    if load:
        if source.source_format not in ("keras", "keras-h5"):
            raise WcompressError(f"load=True gives back Keras models; this container holds a {source.source_format}",
                                 container)
        result.model = load_back(written.path, unsafe)
    return result


def quantize(model, bits=8, data=None, output=None, force=False, unsafe=False, order_file=None, progress=False):
    """Kernels as int8 (Keras: or int4) codes with a float32 scale per output channel, in a file stock
    TensorFlow / Keras loads (`wcompress quantize`): Keras's own quantized layers for Keras models, int8
    variables read through a Cast and a Mul for TF1 graphs. `data` GPTQ-rounds the codes."""
    from wcompress.formats import open_model

    output = fspath(output)
    with Inputs() as given:
        path = given.model(model)
        store = open_model(path, order_file=fspath(order_file))
        if store.format in ("keras", "keras-h5"):
            return _quantize_keras(store, given, bits, data, output, force, unsafe, progress)
        from wcompress.methods.passes import TensorSource
        from wcompress.plugins import get_pass
        from wcompress.methods.runner import run_passes

        get_pass("quantize").new(bits=bits).prepare(TensorSource(store))  # formats it cannot write, before calibrating
        hessians = _hessians(path, data, progress, f"int{bits}") if data is not None else None
        result = run_passes(store, [get_pass("quantize").new(bits=bits, hessians=hessians)], output, force=force,
                            show_progress=bars(progress), tag="int8",
                            hint="their values round to zero at this width" + (": try --bits 8" if bits < 8 else ""))
        return result


def _quantize_keras(store, given, bits, data, output, force, unsafe, progress):
    from wcompress.methods.keras_quantized import quantize_keras

    if bits not in (8, 4):
        raise WcompressError(f"--bits takes 8 or 4, not {bits}")
    written, summary = quantize_keras(store, given.output(output), force=force, data=as_examples(data),
                                      unsafe=unsafe, show_progress=bars(progress), bits=bits)
    result = DocumentResult({"input": store.path, "format": store.format, "input_bytes": store.bytes,
                             "output": written.path, "output_bytes": written.bytes, "quantize": summary})
    if given.in_memory:
        result.model = load_back(written.path, unsafe)
        result.document = given.scrub(result.document)
    return result


def fp16(model, cover=None, min_bytes=None, tensors=(), on_overflow="keep", output=None, force=False,
         order_file=None, progress=False, unsafe=False):
    """Cast the largest float32 tensors to float16, in a file stock TensorFlow / Keras loads (`wcompress fp16`)."""
    from wcompress.plugins import get_pass

    caster = get_pass("fp16").new(cover=cover, min_bytes=min_bytes, tensors=tensors, on_overflow=on_overflow)
    return _run(model, [caster], fspath(output), force, order_file, progress, "fp16", unsafe=unsafe)


def average(checkpoints=(), output=None, folder=None, steps=None, keep_optimizer=False, force=False):
    """Average checkpoints tensor by tensor: float64 sums, original dtype (`wcompress average`). `folder` and
    `steps` ('FROM:TO') add a training folder's checkpoints whose step is in that range."""
    from wcompress.workflows.average import average as run_average
    from wcompress.workflows.average import find_checkpoints

    with Inputs() as given:
        paths = [given.model(c, f"checkpoint{i}") for i, c in enumerate(checkpoints)]
        if folder:
            paths += find_checkpoints(fspath(folder), steps)
        elif steps:
            raise WcompressError("--steps needs --dir")
        document = run_average(paths, given.output(fspath(output), "average.keras"), keep_optimizer=keep_optimizer,
                               force=force)
        model = load_back(document["output"]) if given.is_private(document["output"]) else None
        return DocumentResult(given.scrub(document), model)


def merge(models, output=None, weights=None, normalize=True, dtype="float32", budget=None, input_name=None,
          output_name=None, feeds=(), unsafe=False, custom_objects=None, force=False):
    """One model whose output is the weighted sum of the members' (`wcompress merge`): Keras models into one
    .keras, TF1 graphs into one graph. The merged model is run once before it is written."""
    from wcompress.workflows.merge import merge as run_merge

    with Inputs() as given:
        paths = [given.model(m, f"member{i}") for i, m in enumerate(models)]
        document = run_merge(paths, given.output(fspath(output), "merged.keras"), weights=weights, dtype=dtype,
                             budget=budget, normalize=normalize, input_name=input_name, output_name=output_name,
                             feeds=tuple(feeds), unsafe=unsafe, force=force, custom_objects=custom_objects)
        model = None
        if given.in_memory and str(document["output"]).endswith((".keras", ".h5")):
            model = load_back(document["output"], unsafe, custom_objects)
        return DocumentResult(given.scrub(document), model)


def export(model, output, force=False, int8=True, input_names=(), output_name=None, feeds=(), unsafe=False,
           custom_objects=None):
    """A .tflite of the model, with the converter's sparse encoding and (`int8`) int8 weight storage
    (`wcompress export`)."""
    from wcompress.runtime.tflite_export import export_tflite

    with Inputs() as given:
        path = given.model(model)
        written = export_tflite(path, fspath(output), force=force, int8=int8, unsafe=unsafe,
                                custom_objects=custom_objects, input_names=tuple(input_names) or None,
                                output_name=output_name, feeds=tuple(feeds))
        return DocumentResult(given.scrub({"input": path, "output": written, "output_bytes": os.path.getsize(written)}))
