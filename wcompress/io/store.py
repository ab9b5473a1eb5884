"""The common face of every format: a lazy tensor index, one-tensor loads, and a streaming writer."""

import os
import shutil
import tempfile
from dataclasses import dataclass, field

from ..errors import WcompressError


@dataclass
class WriteResult:
    """What a write produced: every file, and bytes measured with os.path.getsize after the rename."""

    path: str
    files: list = field(default_factory=list)

    @property
    def bytes(self):
        return sum(os.path.getsize(f) for f in self.files)


class ModelStore:
    """Base class. Subclasses fill `tensors` (TensorInfo, in layer order) without loading values."""

    format = "?"
    order_source = "name"  # "model", "graph", "name" or "file" (--order)

    def __init__(self, path):
        self.path = path
        self.tensors = []

    def load(self, name):
        raise NotImplementedError

    def files(self):
        """Every file the model consists of (for sizes and for never writing over the input)."""
        raise NotImplementedError

    @property
    def bytes(self):
        return sum(os.path.getsize(f) for f in self.files())

    def resolve_output(self, dest):
        """Where the output really goes for a user-given -o path."""
        return dest

    def output_files(self, dest):
        """Existing files that writing to `dest` would replace."""
        return [dest] if os.path.exists(dest) else []

    def write(self, target, produce):
        """Write the model to `target`, tensor by tensor: produce(info) gives the array or None to drop it."""
        raise NotImplementedError


def write_safely(store, dest, produce, force=False, writer=None, extra_inputs=(), check=None):
    """Write through a temp path in the destination folder, then rename into place.

    `writer(target, produce)` replaces the store's own writer (e.g. the sparse container), in which
    case `dest` is a single file. `check(bytes)` sees the staged output's size before the rename and
    may raise to leave nothing behind (a size budget). Refuses to write over any input file and,
    without `force`, over any existing file.
    """
    if writer is None:
        dest = store.resolve_output(dest)
        existing = store.output_files(dest)
        writer = store.write
    else:
        existing = [dest] if os.path.exists(dest) else []
    inputs = {os.path.realpath(f) for f in list(store.files()) + list(extra_inputs)} | {os.path.realpath(store.path)}
    real_dest = os.path.realpath(dest)
    clobbered = [os.path.realpath(f) for f in existing]
    if real_dest in inputs or any(f in inputs for f in clobbered) or _same_prefix(store, dest):
        raise WcompressError("output would overwrite the input; choose another -o path", dest)
    if clobbered and not force:
        raise WcompressError("output exists; pass --force to overwrite it", dest)
    parent = os.path.dirname(os.path.abspath(dest))
    new_parent = not os.path.exists(parent)
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".wcompress-", dir=parent)
    done = False
    try:
        target = os.path.join(stage, os.path.basename(dest) or "model")
        produced = writer(target, produce)
        if check is not None:
            check(sum(os.path.getsize(f) for f in _walk(produced)))
        for old in clobbered:
            shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
        final = []
        for path in produced:
            rel = os.path.relpath(path, stage)
            out = os.path.join(parent, rel)
            if rel == "checkpoint" and os.path.exists(out):
                continue  # leave an existing checkpoint state file as it is
            os.replace(path, out)
            final.append(out)
        done = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if not done and new_parent and not os.listdir(parent):
            os.rmdir(parent)  # leave no trace of a failed write
    return WriteResult(path=dest, files=sorted(_walk(final)))


def _walk(paths):
    """Files in `paths`, folders expanded."""
    files = []
    for f in paths:
        if os.path.isdir(f):
            files += [os.path.join(r, n) for r, _, ns in os.walk(f) for n in ns]
        else:
            files.append(f)
    return files


def _same_prefix(store, dest):
    prefix = getattr(store, "prefix", None)
    return prefix is not None and os.path.realpath(prefix) == os.path.realpath(dest)
