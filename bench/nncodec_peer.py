"""Peer tool for the rate-distortion benchmark: Fraunhofer HHI's NNCodec, the reference encoder of the MPEG
neural-network coding standard ISO/IEC 15938-17 (NNC: uniform quantization with dependent / trellis-coded
quantization, then DeepCABAC), on a plain dict of float32 tensors.

`code(tensors_npz, qp, out_npz)` encodes every tensor of the .npz with `nncodec.nn.encode(params, args)`, the
path its README gives for "a python dictionary of float32 numpy arrays", in its default mode (uniform
quantizer, use_dq=True, row_skipping=True, no sparsification, opt_qp off) with `qp` for the weights, then
decodes the bitstream file NNCodec wrote with `nncodec.nn.decode` and saves the result under the same names,
shapes and float32 dtype. NNCodec's dict path (`NNRModel.init_model_from_dict`) types each tensor by rank
alone: rank >= 2 is a "weight", coded at `qp`; rank <= 1 (biases, batch-norm vectors, scalars) is
"unspecified", a non-weight coded at its default `nonweight_qp=-75` (step 5*2^-21 ~ 2.4e-6: near-lossless,
not lossless, and 24-35 bits per value on our models: 19% of fer's bitstream at qp -32, 28% at -20); `code(...,
nonweight_qp=)` changes it. QP (nnc_core.common.get_stepsize_from_qp, qp_density=2): step = (1 + (qp & 3)/4)
* 2^(qp >> 2), ~2^(qp/4), +4 QP doubles it; decoded weights are integer multiples of step, and with
dependent quantization each of its two quantizers has spacing 2*step (max error seen ~1.7 step). The
bitstream holds each tensor's name (~1 byte a character: 4.1 kB of fer's 66.9 kB at qp -32). NNCodec fails
on rank-0 arrays, so they are coded as shape (1,) and given back as rank 0.

NNCodec needs torch and numpy<2, so it runs in its own venv, never a dependency of ours, in a subprocess
(this module imports neither). `ensure_venv()` creates it on first use:
    python3.11 -m venv .cache/nncodec
    .cache/nncodec/bin/pip install nncodec==2.1.3 torch==2.14.1 torchvision==0.29.1 numpy==1.26.4
nncodec 2.1.3 is an sdist: pip compiles its C++ DeepCABAC extension (g++, pybind11). torch / torchvision are
PyPI's default (CUDA 13) builds, ~6 GB with their nvidia-* wheels, run on the CPU: a CPU-only torch wheel
cannot be used, as nncodec imports torchvision at import time and PyPI's torchvision links the CUDA torch
libraries (torchvision::nms missing on a +cpu torch). Each call starts that python (~4 s of imports).
`python bench/nncodec_peer.py weights.npz -38 -32 ...` prints one JSON row per QP.
"""

import glob
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(REPO, ".cache", "nncodec")
REQUIREMENTS = ["nncodec==2.1.3", "torch==2.14.1", "torchvision==0.29.1", "numpy==1.26.4"]
CODE = """
import glob, json, os, sys, time
import numpy as np
from nncodec.nn import encode, decode
src, qp, nonweight_qp, out, tmp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
with np.load(src) as z:
    shapes = {k: z[k].shape for k in z.files}
    params = {k: np.atleast_1d(np.array(z[k], np.float32, order="C")) for k in z.files}  # encode() fails on rank 0
t0 = time.perf_counter()
# nncodec.nn.encode writes the bitstream to tmp/dNN_epoch0_qp_<qp>_bitstream.nnc
encode(params, args={"qp": qp, "nonweight_qp": nonweight_qp, "results": tmp, "verbose": False})
t1 = time.perf_counter()
(path,) = glob.glob(os.path.join(tmp, "*.nnc"))
rec = decode(path)
t2 = time.perf_counter()
assert set(rec) == set(params), sorted(set(rec) ^ set(params))
np.savez(out, **{k: np.asarray(rec[k], np.float32).reshape(shapes[k]) for k in params})
with open(os.path.join(tmp, "result.json"), "w") as fh:
    json.dump({"bytes": os.path.getsize(path), "seconds_encode": t1 - t0, "seconds_decode": t2 - t1}, fh)
"""


def ensure_venv():
    """The venv's python, created with nncodec (and its torch) installed if missing; pip's output to stderr."""
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.run(["python3.11", "-m", "venv", VENV], check=True, stdout=sys.stderr)
    if not glob.glob(os.path.join(VENV, "lib", "python*", "site-packages", "nncodec", "extensions", "deepCABAC*.so")):
        subprocess.run([python, "-m", "pip", "install", *REQUIREMENTS], check=True, stdout=sys.stderr)
    return python


def code(tensors_npz, qp, out_npz, nonweight_qp=-75):
    """Encode all tensors of `tensors_npz` with NNCodec at `qp` (rank < 2 at `nonweight_qp`), decode into `out_npz`.

    Returns dict(bytes=size of the .nnc bitstream, seconds_encode=..., seconds_decode=...) (times exclude
    the imports and the npz I/O)."""
    python = ensure_venv()
    with tempfile.TemporaryDirectory(prefix="nncodec") as tmp:
        subprocess.run([python, "-c", CODE, os.path.abspath(tensors_npz), str(int(qp)), str(int(nonweight_qp)),
                        os.path.abspath(out_npz), tmp],
                       check=True, stdout=sys.stderr)
        with open(os.path.join(tmp, "result.json")) as fh:
            return json.load(fh)


if __name__ == "__main__":
    import numpy as np

    src, qps = sys.argv[1], [int(q) for q in sys.argv[2:]] or [-38, -32, -26, -20]
    with np.load(src) as z:
        orig = {k: z[k] for k in z.files}
    n = sum(v.size for v in orig.values())
    kernels = [k for k, v in orig.items() if v.ndim >= 2]
    for qp in qps:
        with tempfile.TemporaryDirectory() as tmp:
            r = code(src, qp, os.path.join(tmp, "out.npz"))
            with np.load(os.path.join(tmp, "out.npz")) as z:
                dec = {k: z[k] for k in z.files}
        err = sum(float(np.sum((dec[k] - orig[k]) ** 2)) for k in kernels)
        ref = sum(float(np.sum(orig[k].astype(np.float64) ** 2)) for k in kernels)
        print(json.dumps({"qp": qp, "params": n, **r, "ratio": r["bytes"] / (4 * n),
                          "bits_per_param": 8 * r["bytes"] / n, "rel_rms_kernels": (err / ref) ** 0.5}))
