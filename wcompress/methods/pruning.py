"""Calibration-aware one-shot pruning: SparseGPT's prune-and-update (Frantar & Alistarh, "SparseGPT:
Massive Language Models Can Be Accurately Pruned in One-Shot", ICML 2023, Algorithm 1).

The kernel is read as W (inputs x outputs) and H = X^T X / n over its layer's inputs, damped by `damp` x
its mean diagonal. Inputs are visited in order, in blocks of `block`; at the start of each block the
weights to zero are chosen over the whole block by the OBS saliency w^2 / [H^-1]_ii^2 (the lowest
fraction `sparsity`), and as each input row is pruned its error, divided by the Cholesky factor of H^-1,
is subtracted from the rows not yet visited, so the kept weights absorb what the zeroed ones did.
With an N:M pattern the choice is made per group of M input rows instead (the paper's section 3.4).

N:M patterns: in every group of M consecutive input rows of each output column, N weights are kept (rows:
the kernel's axes but the last, flattened; where the input channels are a multiple of M the groups lie
along them, at each window position).
"""

import numpy as np

from wcompress.errors import WcompressError

MAX_GROUP = 16  # the container's N:M code tables hold 2^M entries


def parse_pattern(text):
    """'2:4' -> (2, 4); None stays None. N and M whole, 0 < N < M <= MAX_GROUP."""
    if text is None or isinstance(text, tuple):
        return text
    kept, sep, group = str(text).partition(":")
    try:
        n, m = int(kept), int(group)
    except ValueError:
        n = m = None
    if not sep or n is None or not 0 < n < m <= MAX_GROUP:
        raise WcompressError(f"--pattern takes N:M with 0 < N < M <= {MAX_GROUP} (e.g. 2:4), got {text!r}")
    return n, m


def pattern_fits(shape, pattern):
    """Whether a kernel takes the pattern: its inputs (every axis but the output axis, flattened in order,
    as a convolution's im2col rows: input channels fastest) must split into groups of M. A depthwise
    kernel (output axis 1) has no inputs to group."""
    return len(shape) >= 2 and shape[-1] > 1 and int(np.prod(shape[:-1])) % pattern[1] == 0


def keep_n_of_m(scores, pattern):
    """Boolean mask, True where kept: the N highest scores in every group of M consecutive rows of each
    column of a 2-D (inputs x outputs) score array (ties: the earlier row)."""
    n, m = pattern
    rows, cols = scores.shape
    grouped = scores.reshape(rows // m, m, cols)
    order = np.argsort(-grouped, axis=1, kind="stable")[:, :n]
    keep = np.zeros(grouped.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=1)
    return keep.reshape(rows, cols)


def sparsegpt(array, hessian, sparsity, damp=0.01, block=128, pattern=None):
    """The array with `sparsity` of each block of input rows zeroed, or with `pattern` (N, M) kept in each
    group of M rows, and the rest updated (out in the array's dtype)."""
    work = array.reshape(-1, array.shape[-1]).astype(np.float64)
    if pattern is not None:
        block = max(1, block // pattern[1]) * pattern[1]  # groups never straddle blocks
    rows = work.shape[0]
    if hessian.shape != (rows, rows):
        raise ValueError(f"hessian {hessian.shape} does not match {rows} input rows")
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    if pattern is None:  # with a pattern every group keeps N, whatever their inputs
        work[dead] = 0.0  # inputs never active: their weights do nothing on the data, and cost nothing to drop
    h[np.diag_indices(rows)] += damp * np.mean(np.diag(h))
    upper = np.linalg.cholesky(np.linalg.inv(h)).T  # H^-1 = U^T U
    out = np.empty_like(work)
    for start in range(0, rows, block):
        end = min(start + block, rows)
        part, errors, u = work[start:end].copy(), np.zeros((end - start, work.shape[1])), upper[start:end, start:end]
        saliency = part ** 2 / np.diag(u)[:, None] ** 2
        k = int(np.floor(sparsity * saliency.size)) if pattern is None else 0
        mask = np.zeros(saliency.shape, dtype=bool)
        if k:
            mask.reshape(-1)[np.argpartition(saliency.reshape(-1), k - 1)[:k]] = True
        for i in range(end - start):
            if pattern is not None and i % pattern[1] == 0:  # the group's choice sees the updates so far
                group = slice(i, i + pattern[1])
                mask[group] = ~keep_n_of_m(part[group] ** 2 / np.diag(u)[group, None] ** 2, pattern)
            kept = np.where(mask[i], 0.0, part[i])
            out[start + i] = kept
            error = (part[i] - kept) / u[i, i]
            part[i:] -= np.outer(u[i, i:], error)
            errors[i] = error
        work[end:] -= upper[start:end, end:].T @ errors
    return out.reshape(array.shape).astype(array.dtype)
