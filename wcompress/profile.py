"""Per-tensor statistics for `profile`, computed in chunks so that one tensor is the peak in memory."""

import numpy as np

from .io import TRAINING_STATE
from .io.tensors import OPTIMIZER
from .progress import tensor_progress

HIST_BINS = 16
# Histograms come from an evenly strided sample of this many elements (every other figure is exact).
HIST_SAMPLE = 1_000_000
SMALL = 1e-3
_CHUNK = 1 << 22


def tensor_stats(array):
    """min/max/span/mean/std, exact zero and |w| < 1e-3 counts, and a histogram of the values."""
    flat = np.ascontiguousarray(array).reshape(-1)
    out = {"zeros": int(flat.size - np.count_nonzero(flat))}
    if flat.size == 0 or flat.dtype == object:
        return out
    if not np.issubdtype(flat.dtype, np.number):
        return out
    lo, hi = flat.min(), flat.max()
    out.update(min=float(lo), max=float(hi), span=float(hi) - float(lo))
    if not np.issubdtype(flat.dtype, np.floating):
        return out
    total = total_sq = 0.0
    small = 0
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start:start + _CHUNK].astype(np.float32, copy=False)
        total += float(np.add.reduce(chunk, dtype=np.float64)) if chunk.dtype != np.float32 else float(chunk.sum())
        total_sq += float(np.dot(chunk, chunk))
        small += int(np.count_nonzero(np.abs(chunk) < SMALL))
    mean = total / flat.size
    out.update(mean=mean, std=float(np.sqrt(max(total_sq / flat.size - mean * mean, 0.0))), small=small)
    step = max(1, flat.size // HIST_SAMPLE)
    sample = flat[::step].astype(np.float64)
    if np.isfinite(lo) and np.isfinite(hi):
        counts, _ = np.histogram(sample, bins=HIST_BINS, range=(float(lo), float(hi) if hi > lo else float(lo) + 1))
        out.update(hist=counts.tolist(), hist_sampled=step > 1)
    return out


def profile_model(store, show_progress=True):
    """Stats for every tensor plus model totals, loading one tensor at a time."""
    rows = []
    with tensor_progress(store.tensors, "profiling", enabled=show_progress) as advance:
        for info in store.tensors:
            stats = tensor_stats(store.load(info.name))
            rows.append({
                "name": info.name, "layer": info.layer, "role": info.role, "order": info.order,
                "shape": list(info.shape), "dtype": str(np.dtype(info.dtype)), "params": info.size,
                "bytes": info.nbytes, **stats,
            })
            advance(info)
    model_bytes = sum(r["bytes"] for r in rows)
    for r in rows:
        r["share"] = r["bytes"] / model_bytes if model_bytes else 0.0
    model = [r for r in rows if r["role"] not in TRAINING_STATE]
    weights_bytes = sum(r["bytes"] for r in model)
    return {
        "path": store.path,
        "format": store.format,
        "order": store.order_source,
        "file_bytes": store.bytes,
        "tensors": rows,
        "totals": {
            "tensors": len(rows),
            "model_tensors": len(model),
            "params": sum(r["params"] for r in model),
            "params_with_training_state": sum(r["params"] for r in rows),
            "tensor_bytes": model_bytes,
            "model_bytes": weights_bytes,
            "optimizer_bytes": sum(r["bytes"] for r in rows if r["role"] == OPTIMIZER),
            "training_state_bytes": model_bytes - weights_bytes,
            "tensors_holding_98pct": tensors_covering(model, 0.98),
        },
    }


def tensors_covering(rows, fraction):
    """How many of the largest tensors together hold `fraction` of the bytes (seed 000: 4 of 32 held 98%)."""
    sizes = sorted((r["bytes"] for r in rows), reverse=True)
    total, running = sum(sizes), 0
    for n, size in enumerate(sizes, 1):
        running += size
        if running >= fraction * total:
            return n
    return len(sizes)
