"""Calibration statistics: what each kernel's layer sees when the model runs on the user's data.

For every kernel read by a dense product or a convolution (Keras Dense / Conv1D / Conv2D layers; TF1
MatMul / Conv2D ops), the second moment of its inputs, H = X^T X / n over all rows X of its input (a
convolution's rows are im2col patches, ordered like the kernel's leading axes), accumulated batch by
batch so no activations are held. GPTQ-style rounding compensates quantization error through H.
"""

import hashlib

import numpy as np

from wcompress.errors import WcompressError, warn
from wcompress.formats import open_model
from wcompress.formats.container.quantization import Calibration, ecq_units
from wcompress.formats.tfenv import onednn_enabled
from wcompress.runtime.data import load_data
from wcompress.runtime.predictors import load_predictor


def input_hessians(path, data, batch_size=16, show_progress=False, sensitivity=False, **load_options):
    """A Calibration: {stored tensor name: H (inputs x inputs, float64)} for the kernels the model's products
    read; with `sensitivity`, also ecq's unit steps from how the output moves with each kernel's weights
    (one more pass, forward and backward, over the data)."""
    examples = load_data(data) if isinstance(data, str) else data
    predictor = load_predictor(path, **load_options)
    try:
        by_key = predictor.kernel_input_hessians(examples, batch_size, show_progress)
        fisher, variance = predictor.output_fisher(examples, batch_size, show_progress) \
            if sensitivity and by_key and _differentiable() else ({}, 0.0)
        handles = match_by_content(open_model(path), predictor.weights())
        keys = {name: predictor.handle_key(handle) for name, handle in handles.items()}
    finally:
        predictor.close()
    if not by_key:
        raise WcompressError("found no Dense/Conv layer or MatMul/Conv2D op reading a kernel to calibrate", path)
    hessians = {name: by_key[key] for name, key in keys.items() if key in by_key}
    units = ecq_units({name: fisher[key] for name, key in keys.items() if key in fisher}, variance)
    return Calibration(hessians, units)


def _differentiable():
    """False, with a warning, where differentiating the model could crash TensorFlow (tfenv.onednn_enabled)."""
    if not onednn_enabled():
        return True
    warn("ecq steps leave out the output's sensitivity: TensorFlow was imported with oneDNN on, whose gradients "
         "crash on some convolutions; set TF_ENABLE_ONEDNN_OPTS=0 before importing TensorFlow (or import "
         "wcompress first)")
    return False


def content_key(array):
    digest = hashlib.blake2b(np.ascontiguousarray(array).view(np.uint8).reshape(-1), digest_size=16).digest()
    return array.shape, array.dtype.str, digest


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
