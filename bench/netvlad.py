"""Generate a TF1 checkpoint shaped like seed 000's Gated NetVLAD (K32-H1280, 3,862 classes)."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wcompress.formats.bundle import write_bundle  # noqa: E402

CLASSES, MIXTURES, K, H = 3862, 5, 32, 1280
SHAPES = {
    "tower/video_VLAD/cluster_weights": (1024, K),
    "tower/video_VLAD/cluster_weights2": (1, 1024, K),
    "tower/audio_VLAD/cluster_weights": (128, K),
    "tower/audio_VLAD/cluster_weights2": (1, 128, K),
    "tower/hidden1_weights/hidden1_weights": (K * 1024 + K * 128, H),
    "tower/hidden1_bn/beta": (H,),
    "tower/hidden1_bn/gamma": (H,),
    "tower/hidden1_bn/moving_mean": (H,),
    "tower/hidden1_bn/moving_variance": (H,),
    "tower/hidden2_weights": (H, 2 * H),
    "tower/hidden2_biases": (2 * H,),
    "tower/gating_prob_weights": (2 * H, 2 * H),
    "tower/gates/weights": (2 * H, CLASSES * (MIXTURES + 1)),
    "tower/gates/biases": (CLASSES * (MIXTURES + 1),),
    "tower/experts/weights": (2 * H, CLASSES * MIXTURES),
    "tower/experts/biases": (CLASSES * MIXTURES,),
    "tower/gating_weights_2": (CLASSES, CLASSES),
    "global_step": (),
}


def generate(prefix, sparsity=0.0, seed=0):
    """Write the checkpoint one tensor at a time; `sparsity` zeroes that fraction of each weight matrix."""
    if os.path.exists(prefix + ".index"):
        return prefix
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    rng = np.random.default_rng(seed)

    def items():
        for name, shape in SHAPES.items():
            if name == "global_step":
                yield name, np.array(150000, dtype=np.int64)
                continue
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            if sparsity and len(shape) >= 2:
                value[rng.random(shape, dtype=np.float32) < sparsity] = 0
            yield name, value

    write_bundle(prefix, items())
    return prefix


if __name__ == "__main__":
    path = generate(sys.argv[1] if len(sys.argv) > 1 else "bench/out/netvlad/model.ckpt")
    print(path)
