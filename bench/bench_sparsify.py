"""`sparsify --pack` on the Gated-NetVLAD-shaped checkpoint, side by side with a plain read + SaveV2 write.

Prints: sparsify --pack wall time / (plain TF read of all tensors + SaveV2 of them) (target <= 2.0),
peak RSS of a `wcompress sparsify --pack` process / the largest tensor, and the container's size
against the information bound and the dense float32 bytes (75% relative sparsity, float16 values).
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
from netvlad import generate  # noqa: E402

from wcompress.formats import open_model  # noqa: E402
from wcompress.formats.container import ContainerWriter  # noqa: E402
from wcompress.formats.tfenv import tf  # noqa: E402
from wcompress.plugins import get_pass  # noqa: E402
from wcompress.workflows.reporting import report  # noqa: E402
from wcompress.methods.runner import run_passes  # noqa: E402


def plain_read_write(prefix, out):
    reader = tf.train.load_checkpoint(prefix)
    names = list(reader.get_variable_to_shape_map())
    tensors = [reader.get_tensor(n) for n in names]
    tf.raw_ops.SaveV2(prefix=out, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)


def sparsify_pack(prefix, out):
    store = open_model(prefix)
    sparsifier = get_pass("relative").new(delta=0.75)
    run_passes(store, [sparsifier], out, force=True, show_progress=False,
               writer=ContainerWriter(store, values="float16"))


def timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main():
    prefix = generate(os.path.join(HERE, "out", "netvlad", "model.ckpt"))
    store = open_model(prefix)
    largest = max(t.nbytes for t in store.tensors)
    work = tempfile.mkdtemp(dir=os.path.join(HERE, "out"))
    try:
        container = os.path.join(work, "sparse.h5")
        plain_read_write(prefix, os.path.join(work, "warm"))
        baselines, runs = [], []
        for i in range(2):  # interleaved, best of two
            baselines.append(timed(plain_read_write, prefix, os.path.join(work, f"plain{i}")))
            runs.append(timed(sparsify_pack, prefix, container))
        code = (f"import sys; from wcompress.cli import main; sys.argv = ['wcompress', 'sparsify', {prefix!r}, "
                f"'--method', 'relative', '--delta', '0.75', '--pack', '--values', 'float16', '-o', "
                f"{os.path.join(work, 'rss.h5')!r}]\ntry:\n    main()\nexcept SystemExit:\n    pass")
        peak = peak_rss_of(code)
        baseline_rss = peak_rss_of("from wcompress.formats.tfenv import load; load()")
        totals = report(container, gzip=False)["totals"]
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        print(json.dumps({
            "tensor_bytes": sum(t.nbytes for t in store.tensors),
            "largest_tensor_bytes": largest,
            "plain_read_plus_savev2_s": min(baselines),
            "sparsify_pack_s": min(runs),
            "sparsify_pack_over_plain": min(runs) / min(baselines),
            "peak_rss_bytes": peak,
            "peak_rss_over_largest_tensor": peak / largest,
            "peak_rss_above_tf_import_over_largest_tensor": (peak - baseline_rss) / largest,
            "container_bytes": totals["file_bytes"],
            "sparsity": totals["sparsity"],
            "container_over_bound": totals["file_over_bound"],
            "container_over_dense_float32": totals["file_bytes"] / totals["dense_float32_bytes"],
        }, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
