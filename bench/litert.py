"""Peer tool for the benchmarks: Google's LiteRT AI Edge Quantizer (`ai-edge-quantizer`) on a float .tflite.

`quantize(float_tflite, out, bits)` writes the quantizer's weight-only int8 / int4 channelwise file (integer
weights with a DEQUANTIZE before their op, float activations and compute; `dynamic=True` gives its
dynamic-range recipe instead, the op quantizing activations at run time), and `float_tflite(model, kind,
out)` the float .tflite it starts from: bench_quantize's converter path (Keras or TF1 graph) without
optimizations; a Keras model with a recurrent layer (mhcnuggets' LSTM) at batch 1, the size
`tflite_predictions` feeds, as at a free batch size its loop would need Flex (select TF) ops.

The quantizer runs in its own venv, never a dependency of ours; `ensure_venv()` creates it on first use:
    python3.11 -m venv .cache/litert && .cache/litert/bin/pip install ai-edge-quantizer==0.10.0
(it brings ai-edge-litert, not TensorFlow). `python bench/litert.py` prints JSON: for fer, MTT_musicnn and
mhcnuggets the float, int8 and int4 bytes and the held-out quality of each against the dense model.
"""

import glob
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

VENV = os.path.join(REPO, ".cache", "litert")
REQUIREMENT = "ai-edge-quantizer==0.10.0"
QUANTIZE = """
import sys
from ai_edge_quantizer import qtyping, quantizer
source, out, bits, dynamic = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
q = quantizer.Quantizer(source)
add = q.add_dynamic_config if dynamic else q.add_weight_only_config
add(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=bits,
    granularity=qtyping.QuantGranularity.CHANNELWISE)
q.quantize(enable_progress_bar=False, enable_progress_report=False).export_model(out, overwrite=True)
"""


def ensure_venv():
    """The venv's python, created with the quantizer installed if missing."""
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.run(["python3.11", "-m", "venv", VENV], check=True, stdout=sys.stderr)
    if not glob.glob(os.path.join(VENV, "lib", "python*", "site-packages", "ai_edge_quantizer")):
        subprocess.run([python, "-m", "pip", "install", "--quiet", REQUIREMENT], check=True, stdout=sys.stderr)
    return python


def quantize(float_tflite, out, bits, dynamic=False):
    """`out`: `float_tflite` with int8 (bits=8) or int4 (bits=4) channelwise weights."""
    if bits not in (8, 4):
        raise ValueError(f"bits must be 8 or 4, not {bits}")
    subprocess.run([ensure_venv(), "-c", QUANTIZE, float_tflite, out, str(bits), str(int(dynamic))], check=True,
                   stdout=sys.stderr)
    return out


def float_tflite(model, kind, out):
    """`out`: the float .tflite of a Keras model (kind "keras") or a TF1 checkpoint with .meta ("tf1")."""
    import contextlib

    from bench_quantize import tflite_int8

    if kind != "keras":
        return tflite_int8(model, kind, out, optimize=False)
    with contextlib.redirect_stdout(sys.stderr):  # the converter prints; stdout is for the JSON
        content = _convert_keras(model)
    with open(out, "wb") as fh:
        fh.write(content)
    return out


def _convert_keras(model):
    import keras
    import tensorflow as tf

    loaded = keras.models.load_model(model, compile=False)
    if any(isinstance(layer, keras.layers.RNN) for layer in loaded.layers):
        # At a free batch size the loop's tensor lists need Flex ops; at batch 1 it is builtin ops only.
        batch_1 = keras.Input(batch_shape=(1,) + loaded.input_shape[1:])
        fixed = keras.models.clone_model(loaded, input_tensors=batch_1)
        fixed.set_weights(loaded.get_weights())
        loaded = fixed
    return tf.lite.TFLiteConverter.from_keras_model(loaded).convert()


def main():
    import time

    import numpy as np
    from bench_compress import mhcnuggets
    from bench_quantize import fer_faces, music_clips, predictions, quality, tflite_predictions

    from wcompress import samples

    def saved(work, name, x):
        np.savez(os.path.join(work, name), x=x)
        return os.path.join(work, name + ".npz")

    results = []
    with tempfile.TemporaryDirectory() as work:
        mhc, _, (x, _), _ = mhcnuggets(work)  # bench_compress's 200 test peptides; bench_quantize's others
        models = [("fer", samples.fetch("fer"), "keras", fer_faces(work)[1]),
                  ("MTT_musicnn", samples.fetch("musicnn"), "tf1", saved(work, "music", music_clips(100, 2))),
                  ("mhcnuggets", mhc, "keras", saved(work, "peptides", x))]
        for name, model, kind, held_out in models:
            start = time.perf_counter()
            reference = predictions(model, held_out)
            rows = {}
            source = float_tflite(model, kind, os.path.join(work, f"{name}-float.tflite"))
            for label, bits in (("float", None), ("int8", 8), ("int4", 4)):
                path = source if bits is None else quantize(source, os.path.join(work, f"{name}-{label}.tflite"), bits)
                rows[label] = {"bytes": os.path.getsize(path),
                               **quality(reference, tflite_predictions(path, held_out))}
            for row in rows.values():
                row["over_float"] = row["bytes"] / rows["float"]["bytes"]
            results.append({"model": name, "held_out": int(np.load(held_out)["x"].shape[0]), "rows": rows,
                            "seconds": round(time.perf_counter() - start, 1)})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
