"""Fitting a model's float vectors (biases, batch-norm scales, offsets and moving statistics) to the dense
model's outputs once its kernels are rounded: the rounding shifts and scales what each layer passes on, and a
few thousand per-channel offsets can take much of that back without touching a kernel (as bias correction
does, but fitted to the model's output rather than to each layer's mean).

Descended by Adam on the mean squared difference between the model's outputs and the dense model's, in
mini-batches of the calibration examples, for a fixed number of steps. A fixed fifth of the examples is kept
out of the fit and chooses among them: the vectors are those of the step where the kept-out examples matched
best, or the dense model's where no step did better (Adam's first steps, all of one size, often do worse
before they do better, so the fit is not stopped early). Seeded throughout, so the same inputs give the same vectors.
"""

from dataclasses import asdict, dataclass

import numpy as np

# A step costs about what one batch of the sensitivity pass costs (a forward and a backward pass), so 50 steps of
# 16 are some ten passes over a hundred examples: on MTT_musicnn 1.5 s a step, where calibrating takes a minute.
FIT_STEPS = 50
FIT_RATE = 0.005  # Adam's step, as a fraction of each vector's RMS
FIT_BATCH = 32
CHECK_EVERY = 5
KEPT_OUT_SHARE = 0.2
MIN_EXAMPLES = 10  # fewer cannot spare a part to stop on: vectors are not fitted


@dataclass
class VectorFit:
    """What fitting did: vectors fitted, the step kept (0: none improved), examples fitted on and kept out,
    and the kept-out examples' mean squared output error before and after."""

    vectors: int
    step: int
    fitted_on: int
    kept_out: int
    error_before: float
    error_after: float

    def to_dict(self):
        return asdict(self)


def fit_vectors(predictor, vectors, examples, reference, steps=None):
    """({name: fitted array} (empty where nothing improved or the model cannot be differentiated), VectorFit
    or None). `vectors` is {name: (predictor handle, dense array)}; the predictor holds the model with its
    kernels as stored and is left with the fitted vectors assigned. `reference` is the dense model's output
    on `examples`."""
    reference = np.asarray(reference, np.float32)
    count = len(reference)
    if count < MIN_EXAMPLES or not vectors:
        return {}, None
    names = list(vectors)
    try:
        gradients = predictor.output_error_gradients([vectors[n][0] for n in names])
    except NotImplementedError:
        return {}, None
    feeds = predictor.match(examples)
    order = np.random.default_rng(0).permutation(count)
    kept, fitted = order[:max(2, round(KEPT_OUT_SHARE * count))], order[max(2, round(KEPT_OUT_SHARE * count)):]
    dense = [np.asarray(vectors[n][1]) for n in names]
    for name, array in zip(names, dense):
        predictor.assign(vectors[name][0], array)

    def kept_error():
        out = predictor.predict({k: v[kept] for k, v in feeds.items()})
        return float(np.mean(np.square(out.astype(np.float64) - reference[kept])))

    scales = _scales(dense)
    current = [a.astype(np.float64) for a in dense]
    first = [np.zeros_like(c) for c in current]
    second = [np.zeros_like(c) for c in current]
    before = best_error = kept_error()
    best, best_step = None, 0
    rng = np.random.default_rng(1)
    for step in range(1, (steps or FIT_STEPS) + 1):
        batch = fitted[rng.choice(len(fitted), size=min(FIT_BATCH, len(fitted)), replace=False)]
        grads = gradients({k: v[batch] for k, v in feeds.items()}, reference[batch])
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            first[i] = 0.9 * first[i] + 0.1 * grad
            second[i] = 0.999 * second[i] + 0.001 * grad * grad
            move = (first[i] / (1 - 0.9 ** step)) / (np.sqrt(second[i] / (1 - 0.999 ** step)) + 1e-12)
            current[i] -= FIT_RATE * scales[i] * move
            if dense[i].min() > 0:  # a variance, a scale: kept positive, where the model can read it
                np.maximum(current[i], 0, out=current[i])
            predictor.assign(vectors[names[i]][0], current[i].astype(dense[i].dtype))
        if step % CHECK_EVERY == 0:
            error = kept_error()
            if error < best_error:
                best, best_error, best_step = [c.copy() for c in current], error, step
    chosen = dense if best is None else [c.astype(a.dtype) for c, a in zip(best, dense)]
    for name, array in zip(names, chosen):
        predictor.assign(vectors[name][0], array)
    report = VectorFit(len(names), best_step, len(fitted), len(kept), before, best_error)
    return ({} if best is None else dict(zip(names, chosen))), report


def _scales(arrays):
    """Each vector's RMS, the unit of its Adam steps; a vector of zeros takes the median of the others'."""
    rms = np.array([float(np.sqrt(np.mean(np.square(a, dtype=np.float64)))) for a in arrays])
    positive = rms[rms > 0]
    fallback = float(np.median(positive)) if positive.size else 1.0
    return np.where(rms > 0, rms, fallback)
