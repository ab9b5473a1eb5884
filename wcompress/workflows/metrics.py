"""Metrics for `evaluate`, `sweep`, `autotune` and `ensemble-search`. Plugins add more."""

import importlib
from dataclasses import dataclass

import numpy as np

from wcompress.errors import WcompressError


@dataclass
class Metric:
    name: str
    fn: object  # fn(y_true, y_pred) -> float; for reference metrics y_true is the reference's output
    higher_is_better: bool = True
    needs: str = "labels"  # "labels", or "reference" (fidelity metrics compare to another model)


def _class_labels(y, pred, name):
    y = np.asarray(y)
    if pred.ndim != 2:
        raise WcompressError(f"{name} needs a model output of shape (N, classes), got {pred.shape}")
    if y.ndim == 2 and y.shape == pred.shape:
        return y.argmax(axis=1)
    if y.ndim == 1 and y.shape[0] == pred.shape[0] and np.issubdtype(y.dtype, np.integer):
        if y.size and (y.min() < 0 or y.max() >= pred.shape[1]):
            raise WcompressError(f"{name}: labels outside 0..{pred.shape[1] - 1}")
        return y
    raise WcompressError(f"{name} needs labels of shape ({pred.shape[0]},) as class indices or "
                         f"{pred.shape} one-hot, got {y.shape}")


def top_k(k):
    def accuracy(y, pred):
        labels = _class_labels(y, pred, f"top{k}")
        if pred.shape[1] < 2:
            raise WcompressError(f"top{k} needs a model with at least 2 classes, this one has {pred.shape[1]} "
                                 "output (for one score per example use auc or mse)")
        if k >= pred.shape[1]:
            raise WcompressError(f"top{k} means nothing for a model with {pred.shape[1]} classes (every example "
                                 f"would count as correct): use top1..top{pred.shape[1] - 1}")
        best = np.argsort(-pred, axis=1, kind="stable")[:, :k]
        return float(np.mean([label in row for label, row in zip(labels, best)]))

    return accuracy


def gap(y, pred, k=20):
    """Global Average Precision at k (YouTube-8M): pool each example's top-k predictions, sort by
    confidence, average precision over the pool with every positive label in the denominator."""
    y, pred = np.asarray(y), np.asarray(pred)
    if y.shape != pred.shape or pred.ndim != 2:
        raise WcompressError(f"gap20 needs multi-hot labels of the output's shape {pred.shape}, got {y.shape}")
    k = min(k, pred.shape[1])
    top = np.argpartition(-pred, k - 1, axis=1)[:, :k]
    rows = np.arange(pred.shape[0])[:, None]
    confidence, relevant = pred[rows, top].ravel(), (y[rows, top] > 0).ravel()
    positives = int((y > 0).sum())
    if positives == 0:
        return 0.0
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(relevant[order])
    precision = hits / np.arange(1, hits.size + 1)
    return float((precision * relevant[order]).sum() / positives)


def roc_auc(y, pred):
    """Area under the ROC curve (Mann–Whitney U with average ranks for ties)."""
    y, pred = np.asarray(y).reshape(-1), np.asarray(pred)
    if pred.ndim == 2 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if pred.ndim != 1 or y.shape[0] != pred.shape[0]:
        raise WcompressError(f"auc needs one score per example and binary labels of shape ({pred.shape[0]},), "
                             f"got labels {y.shape} for output {pred.shape}")
    if not np.isin(y, (0, 1)).all():
        raise WcompressError("auc needs binary labels (0/1)")
    positives, negatives = int(y.sum()), int((1 - y).sum())
    if positives == 0 or negatives == 0:
        raise WcompressError("auc needs both positive and negative labels")
    order = np.argsort(pred, kind="mergesort")
    ranks = np.empty(pred.size, dtype=np.float64)
    sorted_scores = pred[order]
    start = 0
    while start < pred.size:  # average ranks over ties
        end = start
        while end + 1 < pred.size and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def mse(y, pred):
    y = np.asarray(y, dtype=np.float64)
    if y.shape != pred.shape and y.reshape(-1).shape != pred.reshape(-1).shape:
        raise WcompressError(f"mse needs labels of the output's shape {pred.shape}, got {y.shape}")
    return float(np.mean((y.reshape(pred.shape) - pred) ** 2))


def agreement(reference, pred):
    """Top-1 agreement with a reference model (for one sigmoid output: same side of 0.5)."""
    if pred.ndim == 2 and pred.shape[1] > 1:
        return float(np.mean(reference.argmax(axis=1) == pred.argmax(axis=1)))
    return float(np.mean((reference.reshape(-1) > 0.5) == (pred.reshape(-1) > 0.5)))


def cosine(reference, pred):
    """Cosine of the angle between all outputs and the reference's, as vectors. Not a correlation: the
    outputs are not centred, so a shared offset (e.g. sigmoid scores all near 0.5) keeps it near 1."""
    a, b = reference.reshape(-1).astype(np.float64), pred.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0))


def pearson(reference, pred):
    """Pearson correlation of all outputs (every example and output, flattened) with the reference's, in
    float64: 1.0 when both are constant and equal, 0.0 when exactly one is constant (or both are, unequal)."""
    a, b = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (reference, pred))
    if a.shape != b.shape:
        raise WcompressError(f"corr needs outputs of the reference's shape {np.shape(reference)}, "
                             f"got {np.shape(pred)}")
    if a.size == 0:
        raise WcompressError("corr needs at least one output")
    # Constant by equality, not by a zero centred sum: the mean of n equal values may round off them.
    a_constant, b_constant = bool((a == a[0]).all()), bool((b == b[0]).all())
    if a_constant or b_constant:
        return 1.0 if a_constant and b_constant and a[0] == b[0] else 0.0
    da, db = a - a.mean(), b - b.mean()
    return float(np.clip((da / np.sqrt(da @ da)) @ (db / np.sqrt(db @ db)), -1.0, 1.0))


def max_abs_diff(reference, pred):
    return float(np.abs(reference.astype(np.float64) - pred).max())


BUILTIN = {
    "top1": Metric("top1", top_k(1)),
    "top5": Metric("top5", top_k(5)),
    "gap20": Metric("gap20", gap),
    "auc": Metric("auc", roc_auc),
    "mse": Metric("mse", mse, higher_is_better=False),
    "fidelity": Metric("fidelity", agreement, needs="reference"),
    "cosine": Metric("cosine", cosine, needs="reference"),
    "corr": Metric("corr", pearson, needs="reference"),
    "maxdiff": Metric("maxdiff", max_abs_diff, higher_is_better=False, needs="reference"),
}


def get_metric(name):
    """A built-in name, topK (e.g. top3), a plugin's metric, or module:function."""
    from wcompress.plugins import get_metrics

    if name in BUILTIN:
        return BUILTIN[name]
    if name.startswith("top") and name[3:].isdigit():
        if int(name[3:]) < 1:
            raise WcompressError(f"{name}: top-k accuracy needs k of 1 or more (top1, top5, …)")
        return Metric(name, top_k(int(name[3:])))
    plugged = get_metrics()
    if name in plugged:
        return plugged[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise WcompressError(f"cannot import metric {name!r} ({exc})") from exc
        return Metric(name, fn, getattr(fn, "higher_is_better", True), getattr(fn, "needs", "labels"))
    known = ", ".join(sorted(BUILTIN) + sorted(plugged))
    raise WcompressError(f"unknown metric {name!r}; available: {known}, topK, or module:function")


def within_budget(metric, score, baseline, max_drop, relative=True):
    """Whether `score` loses at most `max_drop` (a fraction of the baseline, or absolute) against it."""
    return budget_margin(metric, score, baseline, max_drop, relative) >= -1e-12


def budget_margin(metric, score, baseline, max_drop, relative=True):
    """How far `score` lies inside the budget, in the metric's units (negative: outside it)."""
    allowed = abs(baseline) * max_drop if relative else max_drop
    return score - (baseline - allowed) if metric.higher_is_better else baseline + allowed - score


def margin_error(metric, resampled, base_resampled, max_drop, relative=True):
    """The standard error of the budget margin, from the scores of a variant and of the dense model on the
    same bootstrap resamples of the examples (resamples where either is undefined left out; 0.0 with fewer
    than two)."""
    margins = np.array([budget_margin(metric, s, b, max_drop, relative) for s, b in zip(resampled, base_resampled)])
    margins = margins[np.isfinite(margins)]
    return float(np.std(margins, ddof=1)) if margins.size >= 2 else 0.0
