"""Per-tensor statistics for `profile`, computed in chunks so that one tensor is the peak in memory."""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .io import TRAINING_STATE
from .io.tensors import OPTIMIZER
from .progress import tensor_progress

HIST_BINS = 16
# Histograms come from an evenly strided sample of this many elements (every other figure is exact).
HIST_SAMPLE = 1 << 18
SMALL = 1e-3
# Chunks small enough to stay in cache, so the six reductions cost about one pass over memory.
_CHUNK = 1 << 18
_WORKERS = max(1, min(4, os.cpu_count() or 1))


def _reduce(flat, start, stop):
    """min, max, zeros, sum, sum of squares and |w| < SMALL count over flat[start:stop]."""
    lo, hi, zeros, total, total_sq, small = np.inf, -np.inf, 0, 0.0, 0.0, 0
    for i in range(start, stop, _CHUNK):
        chunk = flat[i:min(i + _CHUNK, stop)]
        if chunk.dtype.itemsize < 4:
            chunk = chunk.astype(np.float32)
        lo = min(lo, float(chunk.min()))
        hi = max(hi, float(chunk.max()))
        zeros += int(np.count_nonzero(chunk == 0))  # 3x faster than count_nonzero on floats
        total += float(chunk.sum(dtype=np.float64)) if chunk.dtype == np.float64 else float(chunk.sum())
        total_sq += float(np.dot(chunk, chunk))
        small += int(np.count_nonzero(np.abs(chunk) < SMALL))
    return lo, hi, zeros, total, total_sq, small


def tensor_stats(array):
    """min/max/span/mean/std, exact zero and |w| < 1e-3 counts, and a histogram of the values."""
    flat = np.ascontiguousarray(array).reshape(-1)
    if flat.size == 0 or flat.dtype == object or not np.issubdtype(flat.dtype, np.number):
        return {"zeros": int(flat.size - np.count_nonzero(flat)) if flat.dtype != object else 0}
    if not np.issubdtype(flat.dtype, np.floating):
        return {"zeros": int(flat.size - np.count_nonzero(flat)), "min": float(flat.min()), "max": float(flat.max()),
                "span": float(flat.max()) - float(flat.min())}
    # numpy releases the GIL in these reductions: split big tensors across threads.
    parts = _WORKERS if flat.size >= 8 * _CHUNK else 1
    bounds = [flat.size * k // parts for k in range(parts + 1)]
    if parts > 1:
        with ThreadPoolExecutor(parts) as pool:
            results = list(pool.map(lambda k: _reduce(flat, bounds[k], bounds[k + 1]), range(parts)))
    else:
        results = [_reduce(flat, 0, flat.size)]
    lo = min(r[0] for r in results)
    hi = max(r[1] for r in results)
    zeros, total, total_sq, small = (sum(r[i] for r in results) for i in range(2, 6))
    mean = total / flat.size
    out = {"zeros": int(zeros), "min": lo, "max": hi, "span": hi - lo, "mean": mean,
           "std": float(np.sqrt(max(total_sq / flat.size - mean * mean, 0.0))), "small": int(small)}
    step = max(1, flat.size // HIST_SAMPLE)
    if np.isfinite(lo) and np.isfinite(hi):
        counts, _ = np.histogram(flat[::step], bins=HIST_BINS, range=(lo, hi if hi > lo else lo + 1))
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
