"""TFLite files we did not write: loaded and run once on zeros in a guarded child (formats/child.py) before
this process touches them, so a damaged file is a one-line error, not a crash or a spin."""

import os

from wcompress.errors import WcompressError


# TensorFlow Lite's interpreter trusts the file: a truncated or crafted flatbuffer can crash the process
# (a truncated fer model segfaults it). It is first loaded and run once on zeros in a guarded child
# (io/child.py), stopped by its CPU time: importing TensorFlow and one run of a large model take seconds.
PROBE_CPU_SECONDS = 20  # importing TensorFlow and one run of fer: 4.3 s of CPU


PROBE_CPU_SECONDS_PER_MIB = 0.5


_PROBED = set()


def probe_tflite(path):
    """In the child: load and run `path` once on zeros; {} or {"error": the interpreter's complaint}."""
    import warnings

    warnings.simplefilter("ignore")
    import numpy as np

    from wcompress.formats.tfenv import tf

    try:
        interpreter = tf.lite.Interpreter(model_path=path)
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
        interpreter.invoke()
    except Exception as exc:  # noqa: BLE001 - the interpreter's refusal is the finding, reported in one line
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        return {"error": lines[-1] if lines else type(exc).__name__}
    return {}


def check_tflite(path):
    """Raise a one-line error if loading and running `path` crashes, spins or fails in TensorFlow Lite."""
    from wcompress.formats import child

    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key in _PROBED:
        return
    cpu = PROBE_CPU_SECONDS + PROBE_CPU_SECONDS_PER_MIB * stat.st_size / 2**20
    outcome = child.run(probe_tflite, [os.fspath(path)], cpu_seconds=cpu, fork=False,
                        env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    if outcome.cpu_exceeded or outcome.wall_exceeded:
        raise WcompressError(f"damaged TFLite file: loading it did not finish within {int(cpu)} s of CPU time", path)
    if outcome.signal:
        raise WcompressError(f"damaged TFLite file: loading it crashed TensorFlow Lite ({outcome.signal})", path)
    if outcome.exit_code or not isinstance(outcome.value, dict):
        raise WcompressError("not a TFLite model TensorFlow can run (the check exited without a result)", path)
    if outcome.value.get("error"):
        raise WcompressError(f"not a TFLite model TensorFlow can run ({outcome.value['error']})", path)
    _PROBED.add(key)
