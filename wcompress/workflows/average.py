"""Checkpoint averaging (seed 000: +0.0039 GAP over the best single checkpoint), one tensor at a time."""

import os
import re

import numpy as np

from wcompress.errors import WcompressError
from wcompress.formats import TRAINING_STATE, open_model, write_safely
from wcompress.formats.tensors import STEP

_NUMBERED = re.compile(r"^(?P<stem>.+)-(?P<step>\d+)(?P<ext>\.index|\.weights\.h5|\.keras|\.h5|\.hdf5)$")


def parse_steps(text):
    """'100000:150000', '100000:' or ':150000' -> (low, high), inclusive, None for open ends."""
    low, sep, high = (text or ":").partition(":")
    if not sep:
        raise WcompressError(f"--steps takes FROM:TO (either may be empty), got {text!r}")
    try:
        return (int(low) if low else None), (int(high) if high else None)
    except ValueError as exc:
        raise WcompressError(f"--steps takes whole step numbers, got {text!r}") from exc


def find_checkpoints(folder, steps=None):
    """Checkpoints in a training folder named by step (`model.ckpt-1000`, `w-5.weights.h5`), in step order."""
    if not os.path.isdir(folder):
        raise WcompressError("not a folder", folder)
    low, high = parse_steps(steps)
    series = {}  # (stem, suffix) -> {step: path}: one training run's checkpoints
    for name in os.listdir(folder):
        m = _NUMBERED.match(name)
        if m:
            path = os.path.join(folder, m["stem"] + "-" + m["step"] + ("" if m["ext"] == ".index" else m["ext"]))
            series.setdefault((m["stem"], m["ext"]), {})[int(m["step"])] = path
    if len(series) > 1:
        names = ", ".join(f"{stem}-N{'' if ext == '.index' else ext}" for stem, ext in sorted(series))
        raise WcompressError(f"folder holds several checkpoint series ({names}): name the checkpoints to average", folder)
    found = next(iter(series.values()), {})
    chosen = [(s, p) for s, p in sorted(found.items()) if (low is None or s >= low) and (high is None or s <= high)]
    if not chosen:
        have = ", ".join(str(s) for s in sorted(found)) or "none"
        raise WcompressError(f"no checkpoint in step range {steps} (steps found: {have})", folder)
    return [p for _, p in chosen]


def average(paths, dest=None, keep_optimizer=False, force=False):
    """Mean of every float model tensor (float64 accumulation, original dtype), written like the last input.

    Integer tensors and step counters come from the last checkpoint; optimizer state is dropped
    unless `keep_optimizer` (then also taken from the last checkpoint).
    """
    if len(paths) < 2:
        raise WcompressError("averaging needs at least two checkpoints")
    stores = [open_model(p) for p in paths]
    last = stores[-1]
    _check_compatible(stores, keep_optimizer)

    def produce(info):
        if info.role in TRAINING_STATE and info.role != STEP:
            return last.load(info.name) if keep_optimizer else None
        if info.role == STEP or not info.is_float:
            return last.load(info.name)
        total = np.zeros(info.shape, dtype=np.float64)
        for store in stores:
            total += store.load(info.name)
        total /= len(stores)
        return total.astype(info.dtype)

    written = write_safely(last, dest, produce, force=force, tag="avg",
                           extra_inputs=[f for s in stores for f in s.files()])
    return {"inputs": [s.path for s in stores], "output": written.path, "output_files": written.files,
            "output_bytes": written.bytes, "input_bytes": [s.bytes for s in stores],
            "averaged_tensors": sum(1 for t in last.tensors if t.is_float and t.role not in TRAINING_STATE)}


def _check_compatible(stores, keep_optimizer):
    def signature(store):
        return {t.name: (t.shape, np.dtype(t.dtype).name) for t in store.tensors
                if keep_optimizer or t.role not in TRAINING_STATE or t.role == STEP}

    reference = signature(stores[-1])
    problems = []
    for store in stores:
        if store.format != stores[-1].format:
            problems.append(f"{store.path} is {store.format}, not {stores[-1].format}")
            continue
        mine = signature(store)
        for name in sorted(set(reference) ^ set(mine)):
            problems.append(f"{name} {'missing from' if name in reference else 'only in'} {store.path}")
        for name in sorted(set(reference) & set(mine)):
            if reference[name] != mine[name]:
                (s1, d1), (s2, d2) = mine[name], reference[name]
                problems.append(f"{name} is {d1}{list(s1)} in {store.path}, {d2}{list(s2)} in {stores[-1].path}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise WcompressError("checkpoints do not match: " + "; ".join(problems[:5]) + more)
