"""Calibration statistics: what each kernel's layer sees when the model runs on the user's data.

For every kernel read by a dense product or a convolution (Keras Dense / Conv1D / Conv2D layers; TF1
MatMul / Conv2D ops), the second moment of its inputs, H = X^T X / n over all rows X of its input (a
convolution's rows are im2col patches, ordered like the kernel's leading axes), accumulated batch by
batch so no activations are held. GPTQ-style rounding compensates quantization error through H.
"""

import os

import numpy as np

from wcompress.errors import WcompressError, warn
from wcompress.formats import TRAINING_STATE, open_model
from wcompress.formats.container.quantization import (
    Calibration, ecq_units, parse_values, restored_values, stores_codes)
from wcompress.formats.tensors import content_key
from wcompress.formats.tfenv import onednn_enabled
from wcompress.progress import batch_progress
from wcompress.runtime.data import load_data
from wcompress.runtime.fitting import fit_vectors
from wcompress.runtime.predictors import load_predictor


def input_hessians(path, data, batch_size=16, show_progress=False, sensitivity=False, values=None, **load_options):
    """A Calibration: {stored tensor name: H (inputs x inputs, float64)} for the kernels the model's products
    read; with `sensitivity`, also ecq's unit steps from how the output moves with each kernel's weights
    (one more pass, forward and backward, over the data).

    With `values` that store codes (int8, int4, ecq:QP; stores_codes) the kernels are measured layer
    by layer, each with every tensor before it already as the container restores it, so that GPTQ
    compensates the errors of the layers before it instead of compounding them (see layer_by_layer). With
    ecq values and `sensitivity`, the float vectors are then fitted to the dense model's outputs
    (fitting.fit_vectors): the Calibration's `vectors` and `fit`."""
    examples = load_data(data) if isinstance(data, str) else data
    if sensitivity and onednn_enabled():
        calibration = _calibrate_in_child(path, examples, batch_size, show_progress, values, load_options)
        if calibration is not None:
            return calibration
        sensitivity = _differentiable()  # False, with a warning
    store = open_model(path)
    predictor = load_predictor(path, **load_options)
    try:
        order = predictor.kernel_keys()
        if not order:
            raise WcompressError("found no Dense/Conv layer or MatMul/Conv2D op reading a kernel to calibrate", path)
        handles = match_by_content(store, predictor.weights())  # before any weight is overwritten
        keys = {name: predictor.handle_key(handle) for name, handle in handles.items()}
        differentiable = sensitivity and _differentiable()
        fisher, variance = predictor.output_fisher(examples, batch_size, show_progress) \
            if differentiable else ({}, 0.0)
        units = ecq_units({name: fisher[key] for name, key in keys.items() if key in fisher}, variance)
        fitting = differentiable and parse_values(values)[0] == "ecq"
        reference = predictor.predict(examples, batch_size) if fitting else None
        norms = batch_norm_groups(predictor, store, keys) if fitting else []
        if values is None or not stores_codes(values):
            by_key = predictor.kernel_input_hessians(examples, batch_size, show_progress)
        else:
            by_key = layer_by_layer(predictor, store, handles, keys, order, values, units, examples, batch_size,
                                    show_progress)
        vectors = _float_vectors(store, handles) if fitting else {}
        fitted, fit = fit_vectors(predictor, vectors, examples, reference,
                                  show_progress=show_progress) if fitting else ({}, None)
        now = {**{name: array for name, (_, array) in vectors.items()}, **fitted}  # the fit loaded them already
        current = lambda name: now[name] if name in now else store.load(name)  # noqa: E731
        folded = fold_batch_norms(predictor, handles, norms, current, examples, batch_size) if norms else {}
    finally:
        predictor.close()
    if fit is not None:
        fit.batch_norms_folded = len(folded) // 4
    hessians = {name: by_key[key] for name, key in keys.items() if key in by_key}
    return Calibration(hessians, units, {**fitted, **folded}, fit)


def batch_norm_groups(predictor, store, keys):
    """[(gamma, beta, moving mean, moving variance names, epsilon)] of the batch norms the predictor runs as
    (x - mean) / sqrt(variance + epsilon) x gamma + beta (Predictor.batch_norms) whose four vectors are stored
    float vectors of one shape."""
    name_of = {key: name for name, key in keys.items()}
    info = {t.name: t for t in store.tensors}
    groups = []
    for *group, epsilon in predictor.batch_norms():
        names = [name_of.get(key) for key in group]
        if None in names or not epsilon > 0 or len({tuple(info[n].shape) for n in names}) != 1 \
                or any(np.dtype(info[n].dtype).kind != "f" for n in names):
            continue
        groups.append((*names, epsilon))
    return groups


def fold_batch_norms(predictor, handles, norms, current, examples, batch_size=16):
    """{name: array}: each batch norm of `norms` (batch_norm_groups) rewritten as the two vectors its output
    depends on, once the vectors are fitted (`current(name)`: a vector as it now is): its moving mean and
    variance zero and gamma' = s sqrt(epsilon), beta' = beta - mean s, where s = gamma / sqrt(variance +
    epsilon), so the layer computes the same x s + beta' at inference. Two of its four vectors then cost
    nothing, and two are rounded where four were.

    Assigned to the predictor's model, and kept only if its output on `examples` stays within 1e-4 of what it
    was (its largest magnitude): a layer whose runtime differs from the formula (an epsilon clamped by a fused
    kernel, say) then folds nothing, with a warning. Folded after the fit, not before: the fit descends faster on
    the four vectors (MTT_musicnn QP 12: kept-out error 0.0024 to 0.0006 on the four, 0.0020 to 0.0015 on
    gamma' and beta')."""
    folded, kept = {}, {}
    for *names, epsilon in norms:
        arrays = [current(name) for name in names]
        gamma, beta, mean, variance = (np.asarray(a, np.float64) for a in arrays)
        if not all(np.isfinite(a).all() for a in (gamma, beta, mean, variance)) or np.any(variance + epsilon <= 0):
            continue
        scale = gamma / np.sqrt(variance + epsilon)
        rewritten = (scale * np.sqrt(epsilon), beta - mean * scale, np.zeros_like(mean), np.zeros_like(variance))
        for name, array, like in zip(names, rewritten, arrays):
            folded[name], kept[name] = array.astype(like.dtype), like
    if not folded:
        return {}
    before = np.asarray(predictor.predict(examples, batch_size), np.float64)
    for name, array in folded.items():
        predictor.assign(handles[name], array)
    after = np.asarray(predictor.predict(examples, batch_size), np.float64)
    moved = float(np.max(np.abs(after - before))) if after.shape == before.shape else np.inf
    if moved <= 1e-4 * float(np.max(np.abs(before))):
        return folded
    for name, array in kept.items():
        predictor.assign(handles[name], array)
    warn(f"batch norms kept unfolded: folded, the model's output moved by {moved:.3g}")
    return {}


def _float_vectors(store, handles):
    """{name: (handle, array)} of the model's float vectors (biases, batch norms) that have a variable."""
    vectors = {info.name for info in store.tensors if info.role not in TRAINING_STATE and len(info.shape) == 1
               and info.size > 1 and np.dtype(info.dtype).kind == "f"}  # read from the index: no kernel is loaded
    return {name: (handle, store.load(name)) for name, handle in handles.items() if name in vectors}


def layer_by_layer(predictor, store, handles, keys, order, values, units, examples, batch_size=16,
                   show_progress=False):
    """{kernel key: H} measured in `order` (inputs before outputs) on the predictor's model as it is being
    stored: first every tensor that is not calibrated (vectors, other floats), then each kernel right after
    its H, by the same `restored_values` the container's writer applies with that H. `handles` and `keys`
    map stored names to the predictor's variables and their keys (match_by_content).

    Measured on MTT_musicnn (bench_rd's data): H from the dense model let GPTQ move the kernels by 1-6x their
    norm at QP 8-12, each layer fitting inputs the quantized model no longer gives it; held-out quality
    at QP 8, 10 and 12 was 0.78, 0.95 and -0.19, and is 0.97, 0.97 and 0.88 measured layer by layer."""
    name_of = {key: name for name, key in keys.items()}
    calibrated = set(order)
    for name, handle in handles.items():
        if keys[name] not in calibrated:
            predictor.assign(handle, restored_values(store.load(name), values, None, units.get(name)))
    hessians = {}
    with batch_progress(len(order), enabled=show_progress, label="calibrating layer by layer",
                        unit="kernels") as advance:
        for key in order:
            measured = predictor.kernel_input_hessians(examples, batch_size, keys=[key])
            if key in measured:
                hessians[key] = measured[key]
                name = name_of.get(key)
                if name is not None:
                    restored = restored_values(store.load(name), values, measured[key], units.get(name))
                    predictor.assign(handles[name], restored)
            advance(1)
    return hessians


def _differentiable():
    """False, with a warning, where differentiating the model could crash TensorFlow (tfenv.onednn_enabled)."""
    if not onednn_enabled():
        return True
    warn("ecq steps leave out the output's sensitivity: TensorFlow was imported with oneDNN on, whose gradients "
         "crash on some convolutions, and no child process could calibrate without it; set "
         "TF_ENABLE_ONEDNN_OPTS=0 before importing TensorFlow")
    return False


def _calibrate_in_child(path, examples, batch_size, show_progress, values, load_options):
    """The Calibration input_hessians gives, computed in a child process with oneDNN off: TensorFlow was
    imported here with it on (a script that imported Keras first, an in-memory model), which cannot be
    undone, and its convolution gradients crash. None where the child cannot run or did not finish."""
    import json
    import shutil
    import tempfile

    from wcompress.formats import child

    try:
        json.dumps(load_options)
    except TypeError:  # custom objects (classes) cannot cross to another interpreter
        return None
    folder = tempfile.mkdtemp(prefix="wcompress-calibration-")
    try:
        inputs = _save_named(os.path.join(folder, "examples.npz"), examples)
        outcome = child.run(calibrate_to_folder, [os.fspath(path), folder, inputs, batch_size, show_progress, values,
                                                  load_options],
                            cpu_seconds=CHILD_SECONDS, wall_seconds=CHILD_SECONDS, fork=False,
                            env={"TF_ENABLE_ONEDNN_OPTS": "0"}, quiet=not show_progress)
        return _read_calibration(folder, outcome.value) if outcome.ok and outcome.value else None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


CHILD_SECONDS = 7 * 24 * 3600  # a calibration has no natural limit: the command's own interruption stops it


def calibrate_to_folder(path, folder, inputs, batch_size, show_progress, values, load_options):
    """In the child: input_hessians with sensitivity on `folder`/examples.npz (the arrays of `inputs`, in
    order), its arrays saved in `folder`; returns their names (a Calibration's dicts, keyed by tensor name)
    and the fit."""
    examples = _load_named(os.path.join(folder, "examples.npz"), inputs)
    calibration = input_hessians(path, examples, batch_size, show_progress, sensitivity=True, values=values,
                                 **load_options)
    parts = {"hessians": dict(calibration), "units": calibration.units, "vectors": calibration.vectors}
    names = {part: _save_named(os.path.join(folder, part + ".npz"), arrays) for part, arrays in parts.items()}
    names["fit"] = calibration.fit.to_dict() if calibration.fit is not None else None
    return names


def _save_named(path, arrays):
    """{name: array} saved by position (names, e.g. tensor and input names, may hold "/" and ":"); the names."""
    names = list(arrays)
    np.savez(path, *[np.asarray(arrays[name]) for name in names])
    return names


def _load_named(path, names):
    with np.load(path, allow_pickle=False) as arrays:
        return {name: arrays[f"arr_{i}"] for i, name in enumerate(names)}


def _read_calibration(folder, names):
    from wcompress.runtime.fitting import VectorFit

    parts = {part: _load_named(os.path.join(folder, part + ".npz"), names[part])
             for part in ("hessians", "units", "vectors")}
    fit = VectorFit(**names["fit"]) if names["fit"] else None
    return Calibration(parts["hessians"], parts["units"], parts["vectors"], fit)


def match_by_content(store, weights):
    """{tensor name: variable handle} where exactly one stored tensor and one variable hold the same values."""
    variables = {}
    for handle, value in weights:
        if value.size > 1 and value.dtype != object:
            variables.setdefault(content_key(value), []).append(handle)
    shapes = {key[:2] for key in variables}
    stored = {}
    for info in store.tensors:
        if info.size > 1 and (tuple(info.shape), np.dtype(info.dtype).str) in shapes:
            stored.setdefault(content_key(store.load(info.name)), []).append(info.name)
    return {names[0]: variables[key][0] for key, names in stored.items()
            if len(names) == 1 and len(variables.get(key, ())) == 1}
