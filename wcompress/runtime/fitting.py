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

from wcompress.progress import batch_progress

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
    the kept-out examples' mean squared output error before and after, and how many batch norms were folded
    into a scale and an offset after it (capture.fold_batch_norms)."""

    vectors: int
    step: int
    fitted_on: int
    kept_out: int
    error_before: float
    error_after: float
    batch_norms_folded: int = 0

    def to_dict(self):
        return asdict(self)


def fit_vectors(predictor, vectors, examples, reference, steps=None, show_progress=False):
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
    split = max(2, round(KEPT_OUT_SHARE * count))
    kept, fitted = order[:split], order[split:]
    dense = [np.asarray(vectors[n][1]) for n in names]

    def assign(arrays):
        for name, array, like in zip(names, arrays, dense):
            predictor.assign(vectors[name][0], array.astype(like.dtype, copy=False))

    def kept_error():
        out = predictor.predict({k: v[kept] for k, v in feeds.items()})
        return float(np.mean(np.square(out.astype(np.float64) - reference[kept])))

    assign(dense)
    adam = _Adam(dense)
    before = best_error = kept_error()
    best, best_step = None, 0
    rng = np.random.default_rng(1)
    total = steps or FIT_STEPS
    with batch_progress(total, enabled=show_progress, label="fitting biases and batch norms",
                        unit="steps") as advance:
        for step in range(1, total + 1):
            batch = fitted[rng.choice(len(fitted), size=min(FIT_BATCH, len(fitted)), replace=False)]
            assign(adam.step(gradients({k: v[batch] for k, v in feeds.items()}, reference[batch])))
            if step % CHECK_EVERY == 0:
                error = kept_error()
                if error < best_error:
                    best, best_error, best_step = [c.copy() for c in adam.values], error, step
            advance(1)
    chosen = dense if best is None else [c.astype(a.dtype) for c, a in zip(best, dense)]
    assign(chosen)
    report = VectorFit(len(names), best_step, len(fitted), len(kept), before, best_error)
    return ({} if best is None else dict(zip(names, chosen))), report


class _Adam:
    """Adam (Kingma & Ba 2015, defaults) over float64 copies of the vectors, each step FIT_RATE x the vector's
    RMS; a vector that is positive throughout (a variance, a scale) is kept non-negative."""

    def __init__(self, arrays):
        self.values = [a.astype(np.float64) for a in arrays]
        self.scales = _scales(arrays)
        self.positive = [a.min() > 0 for a in arrays]
        self.first = [np.zeros_like(v) for v in self.values]
        self.second = [np.zeros_like(v) for v in self.values]
        self.count = 0

    def step(self, grads):
        self.count += 1
        for i, grad in enumerate(grads):
            if grad is None:  # the output does not read this vector
                continue
            self.first[i] = 0.9 * self.first[i] + 0.1 * grad
            self.second[i] = 0.999 * self.second[i] + 0.001 * grad * grad
            move = (self.first[i] / (1 - 0.9 ** self.count)) / (
                np.sqrt(self.second[i] / (1 - 0.999 ** self.count)) + 1e-12)
            self.values[i] -= FIT_RATE * self.scales[i] * move
            if self.positive[i]:
                np.maximum(self.values[i], 0, out=self.values[i])
        return self.values


def _scales(arrays):
    """Each vector's RMS, the unit of its Adam steps; a vector of zeros takes the median of the others'."""
    rms = np.array([float(np.sqrt(np.mean(np.square(a, dtype=np.float64)))) for a in arrays])
    positive = rms[rms > 0]
    fallback = float(np.median(positive)) if positive.size else 1.0
    return np.where(rms > 0, rms, fallback)
