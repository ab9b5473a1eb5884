"""Calibration-aware one-shot pruning: SparseGPT's prune-and-update (Frantar & Alistarh, "SparseGPT:
Massive Language Models Can Be Accurately Pruned in One-Shot", ICML 2023, Algorithm 1).

The kernel is read as W (inputs x outputs) and H = X^T X / n over its layer's inputs, damped by `damp` x
its mean diagonal. Inputs are visited in order, in blocks of `block`; at the start of each block the
weights to zero are chosen over the whole block by the OBS saliency w^2 / [H^-1]_ii^2 (the lowest
fraction `sparsity`), and as each input row is pruned its error, divided by the Cholesky factor of H^-1,
is subtracted from the rows not yet visited, so the kept weights absorb what the zeroed ones did.
"""

import numpy as np


def sparsegpt(array, hessian, sparsity, damp=0.01, block=128):
    """The array with `sparsity` of each block of input rows zeroed and the rest updated (float32 out)."""
    work = array.reshape(-1, array.shape[-1]).astype(np.float64)
    rows = work.shape[0]
    if hessian.shape != (rows, rows):
        raise ValueError(f"hessian {hessian.shape} does not match {rows} input rows")
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    work[dead] = 0.0  # inputs never active: their weights do nothing on the data, and cost nothing to drop
    h[np.diag_indices(rows)] += damp * np.mean(np.diag(h))
    upper = np.linalg.cholesky(np.linalg.inv(h)).T  # H^-1 = U^T U
    out = np.empty_like(work)
    for start in range(0, rows, block):
        end = min(start + block, rows)
        part, errors, u = work[start:end].copy(), np.zeros((end - start, work.shape[1])), upper[start:end, start:end]
        saliency = part ** 2 / np.diag(u)[:, None] ** 2
        k = int(np.floor(sparsity * saliency.size))
        mask = np.zeros(saliency.shape, dtype=bool)
        if k:
            mask.reshape(-1)[np.argpartition(saliency.reshape(-1), k - 1)[:k]] = True
        for i in range(end - start):
            kept = np.where(mask[i], 0.0, part[i])
            out[start + i] = kept
            error = (part[i] - kept) / u[i, i]
            part[i:] -= np.outer(u[i, i:], error)
            errors[i] = error
        work[end:] -= upper[start:end, end:].T @ errors
    return out.reshape(array.shape).astype(array.dtype)
