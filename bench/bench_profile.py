"""`profile` on a ~0.7 GB Gated-NetVLAD-shaped TF1 checkpoint, measured side by side with a plain read.

Prints: profile wall time / plain `tf.train.load_checkpoint` read of every tensor (target <= 1.5),
and the peak RSS of a `wcompress profile` process / the largest tensor's bytes.
"""

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from netvlad import generate  # noqa: E402

from wcompress.formats import open_model  # noqa: E402
from wcompress.formats.tfenv import tf  # noqa: E402
from wcompress.workflows.stats import profile_model  # noqa: E402


def plain_read(prefix):
    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)


def timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def peak_rss_of(code):
    """Peak RSS (bytes) of a fresh Python process running `code` (its VmHWM, which exec resets)."""
    report = "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    out = subprocess.run([sys.executable, "-c", code + "\n" + report], check=True, capture_output=True, text=True,
                         cwd=os.path.dirname(HERE))
    return int(out.stdout.strip().splitlines()[-1]) * 1024


def main():
    prefix = generate(os.path.join(HERE, "out", "netvlad", "model.ckpt"))
    store = open_model(prefix)
    total = sum(t.nbytes for t in store.tensors)
    largest = max(t.nbytes for t in store.tensors)
    plain_read(prefix)  # warm the page cache for both sides
    reads, profiles = [], []
    for _ in range(3):  # interleaved, best of three: these machines are noisy
        reads.append(timed(plain_read, prefix))
        profiles.append(timed(lambda: profile_model(open_model(prefix), show_progress=False)))
    baseline = peak_rss_of("from wcompress.formats.tfenv import load; load()")
    peak = peak_rss_of(f"from wcompress.formats import open_model; from wcompress.workflows.stats import profile_model; "
                       f"profile_model(open_model({prefix!r}), show_progress=False)")
    result = {
        "checkpoint_bytes": open_model(prefix).bytes,
        "tensor_bytes": total,
        "largest_tensor_bytes": largest,
        "plain_read_s": min(reads),
        "profile_s": min(profiles),
        "profile_over_read": min(profiles) / min(reads),
        "peak_rss_bytes": peak,
        "tf_import_rss_bytes": baseline,
        "peak_rss_over_largest_tensor": peak / largest,
        "peak_rss_above_tf_over_largest_tensor": (peak - baseline) / largest,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
