"""Per-tensor statistics for `profile`, computed in chunks so that one tensor is the peak in memory."""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from wcompress.formats.dtypes import computing
from wcompress.formats import TRAINING_STATE
from wcompress.formats.tensors import OPTIMIZER, quantized_layers
from wcompress.progress import tensor_progress

HIST_BINS = 16
# Histograms come from an evenly strided sample of this many elements (every other figure is exact).
HIST_SAMPLE = 1 << 18
SMALL = 1e-3
# Chunks small enough to stay in cache, so the reductions (the float64 ones for mean and std included)
# cost about one pass over memory.
_CHUNK = 1 << 18
_WORKERS = max(1, min(4, os.cpu_count() or 1))


def _reduce(flat, start, stop, shift):
    """min, max, zeros, |w| < SMALL count, Σd and Σd² (d = w − shift, in float64) over flat[start:stop].

    With `shift` near the mean, d is exact for the values near the mean and Σd² − (Σd)²/n loses
    nothing to cancellation, so the std is exact to float64 rounding in one pass over cache-sized
    chunks; never E[w²] − E[w]² about 0 in float32, which cancels catastrophically (a one-element
    tensor used to show a std of 4.55e-05).
    """
    lo, hi, zeros, small, total, total_sq = np.inf, -np.inf, 0, 0, 0.0, 0.0
    size = min(_CHUNK, max(stop - start, 0))
    dev = np.empty(size, dtype=np.float64)
    mags = np.empty(size, dtype=np.float32)
    flags = np.empty(size, dtype=bool)
    for i in range(start, stop, _CHUNK):
        chunk = flat[i:min(i + _CHUNK, stop)]
        if chunk.dtype.itemsize < 4:
            chunk = chunk.astype(np.float32)
        n = chunk.size
        lo = np.minimum(lo, chunk.min())  # np.minimum, not min(): a NaN must come through
        hi = np.maximum(hi, chunk.max())
        zeros += int(np.count_nonzero(np.equal(chunk, 0, out=flags[:n])))
        if chunk.dtype == np.float32:
            np.abs(chunk, out=mags[:n])
            small += int(np.count_nonzero(np.less(mags[:n], np.float32(SMALL), out=flags[:n])))
        else:
            small += int(np.count_nonzero(np.abs(chunk) < SMALL))
        d = dev[:n]
        np.copyto(d, chunk, casting="unsafe")
        d -= shift
        total += float(d.sum())  # numpy's pairwise summation
        total_sq += float(np.multiply(d, d, out=d).sum())  # not np.dot/vecdot: threaded BLAS, 10x slower here
    return float(lo), float(hi), zeros, small, total, total_sq


def tensor_stats(array):
    """min/max/span/mean/std, exact zero and |w| < 1e-3 counts, and a histogram of the values.

    mean and std (the population std, ddof=0) are float64 and agree with numpy's float64
    `x.astype(np.float64).std()` to float64 rounding; a constant tensor gives exactly 0.
    """
    flat = computing(np.ascontiguousarray(array).reshape(-1))  # bfloat16: its exact float32 values
    if flat.size == 0 or flat.dtype == object or not np.issubdtype(flat.dtype, np.number):
        return {"zeros": int(flat.size - np.count_nonzero(flat)) if flat.dtype != object else 0}
    if not np.issubdtype(flat.dtype, np.floating):
        return {"zeros": int(flat.size - np.count_nonzero(flat)), "min": float(flat.min()), "max": float(flat.max()),
                "span": float(flat.max()) - float(flat.min())}
    step = max(1, flat.size // HIST_SAMPLE)
    sample = flat[::step].astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf and NaN weights give NaN figures, silently
        shift = float(sample.mean())  # near the mean: exact subtractions, no cancellation
        if not np.isfinite(shift):
            shift = 0.0
        # numpy releases the GIL in these reductions: split big tensors across threads.
        parts = _WORKERS if flat.size >= 8 * _CHUNK else 1
        bounds = [flat.size * k // parts for k in range(parts + 1)]
        if parts > 1:
            with ThreadPoolExecutor(parts) as pool:
                results = list(pool.map(lambda k: _reduce(flat, bounds[k], bounds[k + 1], shift), range(parts)))
        else:
            results = [_reduce(flat, 0, flat.size, shift)]
        lo = float(np.min([r[0] for r in results]))
        hi = float(np.max([r[1] for r in results]))
        zeros, small = sum(r[2] for r in results), sum(r[3] for r in results)
        total, total_sq = sum(r[4] for r in results), sum(r[5] for r in results)
        mean = shift + total / flat.size
        m2 = max(total_sq - total * total / flat.size, 0.0) if np.isfinite(total_sq) else total_sq
        if lo == hi:  # constant (or one element): exactly, whatever the rounding of the sums
            mean, m2 = lo, 0.0
        elif np.isfinite(mean):
            mean = min(max(mean, lo), hi)
        std = float(np.sqrt(m2 / flat.size))
    out = {"zeros": int(zeros), "min": lo, "max": hi, "span": hi - lo, "mean": mean, "std": std,
           "small": int(small)}
    if np.isfinite(lo) and np.isfinite(hi):
        # float64 edges: in float32, a narrow range far from 0 (1e4 ± 1e-3) cannot hold 16 distinct bins.
        counts, _ = np.histogram(sample, bins=HIST_BINS, range=(lo, hi if hi > lo else lo + 1))
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
    quantized = [{"layer": layer, "code_bits": bits, "weights": weights, "bytes": size,
                  "bits_per_weight": 8 * size / weights if weights else 0.0}
                 for layer, (bits, weights, size) in quantized_layers(
                     store.tensors, getattr(store, "quantization_modes", None)).items()]
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
        "quantized_layers": quantized,
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
    """How many of the largest tensors together hold `fraction` of the bytes (in a Gated NetVLAD video
    classifier, 4 of 32 held 98%)."""
    sizes = sorted((r["bytes"] for r in rows), reverse=True)
    total, running = sum(sizes), 0
    for n, size in enumerate(sizes, 1):
        running += size
        if running >= fraction * total:
            return n
    return len(sizes)
