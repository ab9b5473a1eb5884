"""Keras's own quantized format: what `model.quantize("int8")` saves, which stock
`keras.models.load_model` loads and runs.

Keras quantizes the layers that implement it (Dense, EinsumDense, Embedding in Keras 3.15): int8 kernels
with a scale per output unit, and, in its int8 mode, each call's inputs quantized on the fly as well.
Every other layer stays float and is reported with its share of the weight bytes. With calibration
statistics, a Dense kernel's codes are GPTQ-rounded (wcompress/formats/container/quantization.py) before saving, in the
same layout (Keras stores the inverse scale: value = code / kernel_scale).
"""

import os

import numpy as np

from wcompress.errors import WcompressError, short_list
from wcompress.formats.container.quantization import LEVELS, quantize_calibrated
from wcompress.formats.keras_h5 import save_keras
from wcompress.formats.tensors import quantized_layer_names
from wcompress.formats.writing import write_safely


def quantize_keras(store, dest, force=False, data=None, unsafe=False, custom_objects=None, show_progress=False,
                   bits=8):
    """Write the model with every layer Keras can hold quantized in int8 (or int4: Keras packs two codes per
    byte). Returns (WriteResult, summary)."""
    from wcompress.runtime.predictors import KerasPredictor
    from wcompress.runtime.data import load_data
    from wcompress.runtime.keras_models import load_keras_model

    if store.format not in ("keras", "keras-h5"):
        raise WcompressError(f"Keras's quantized format needs a Keras model, not a {store.format}", store.path)
    already = quantized_layer_names(store.tensors)
    if already:
        raise WcompressError(f"already quantized: {short_list(already)} hold "
                             "integer codes, and quantizing starts from float weights; quantize the float model, or "
                             "`wcompress pack` this one (its codes kept as they are)", store.path)
    model = load_keras_model(store.path, unsafe, custom_objects)
    kernels = {id(layer.kernel): layer for layer in _layers(model) if type(layer).__name__ == "Dense"}
    hessians = {}
    mode = {8: "int8", 4: "int4"}[bits]
    if data is not None and bits == 8:  # Keras's int4 layout (packed, its own scales) is left as Keras rounds it
        predictor = KerasPredictor(model=model)
        examples = load_data(data) if isinstance(data, str) else data
        for index, hessian in predictor.kernel_input_hessians(examples, show_progress=show_progress).items():
            layer = kernels.get(id(model.weights[index]))
            if layer is not None:
                hessians[id(layer)] = (hessian, np.asarray(layer.kernel.numpy()))
    owner = {}  # each weight belongs to the innermost layer holding it (an LSTM's to its cell)
    for layer in _layers(model):
        for w in layer.weights:
            owner[id(w)] = (layer.path, int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize)
    float_bytes = {}
    for path, size in owner.values():
        float_bytes[path] = float_bytes.get(path, 0) + size
    import warnings

    with warnings.catch_warnings():  # Keras warns about each layer it cannot quantize: we say it once, below
        warnings.simplefilter("ignore")
        model.quantize(mode)
    quantized, calibrated = [], []
    for layer in _layers(model):
        if getattr(layer, "quantization_mode", None) != mode:
            continue
        quantized.append(layer.path)
        if id(layer) in hessians:
            hessian, kernel = hessians[id(layer)]
            calibrated_codes = quantize_calibrated(kernel, hessian, LEVELS[8])
            if calibrated_codes is not None and kernel.ndim == 2 and kernel.shape[-1] > 1:  # Keras's layout
                codes, scale = calibrated_codes
                layer._kernel.assign(codes)
                layer.kernel_scale.assign(1.0 / scale)
                calibrated.append(layer.path)
    if not quantized:
        raise WcompressError(f"no layer of this model has a Keras {mode} form (Keras quantizes Dense, EinsumDense and "
                             "Embedding): use `wcompress pack --values int8`", store.path)
    total = sum(float_bytes.values())
    kept = {name: size for name, size in float_bytes.items() if name not in quantized and size}

    def save(target, produce):
        if not target.endswith(".keras"):
            raise WcompressError("Keras saves quantized models only as .keras: name the output NAME.keras", target)
        save_keras(model, target)
        return [target]

    if dest is None:  # beside the input, as .keras whatever the input's suffix
        stem = os.path.basename(store.path)
        for suffix in (".keras", ".hdf5", ".h5"):
            stem = stem[:-len(suffix)] if stem.endswith(suffix) else stem
        dest = os.path.join(os.path.dirname(os.path.abspath(store.path)), f"{stem}.{mode}.keras")
    written = write_safely(store, dest, None, force=force, writer=save, container=False, tag=mode)
    summary = {"bits": bits, "format": "keras", "quantized_layers": quantized, "calibrated_layers": calibrated,
               "float_layers": sorted(kept), "float_share": sum(kept.values()) / total if total else 0.0}
    return written, summary


def _layers(model):
    return list(model._flatten_layers(include_self=False))
