"""Every write of every command: staged in a folder beside the destination, checked, renamed into place,
and nothing left behind on a failure, Ctrl-C or SIGTERM (the policy itself is formats/outputs.py)."""

import os
import shutil
import tempfile

from wcompress.errors import WcompressError
from wcompress.formats.keras_h5 import convert_keras
from wcompress.formats.outputs import check_not_input, native_suffix, plan_output
from wcompress.formats.store import WriteResult


def check_destination(store, dest, force=False, tag="out", container=False, name=None, beside=None,
                      extra_inputs=()):
    """The output plan for `dest`, refused when it would touch an input or, without `force`, replace an
    existing output. write_safely calls it; a long command calls it first too, so that it refuses before
    an hour of work rather than after it."""
    plan = plan_output(store, dest, tag=tag, container=container, name=name, beside=beside)
    check_not_input(plan, list(store.files()) + list(extra_inputs) + [store.path])
    if plan.replaces and not force:
        raise WcompressError("output exists; pass --force to overwrite it", plan.path)
    return plan


def write_safely(store, dest, produce, force=False, writer=None, extra_inputs=(), check=None, tag="out",
                 name=None, beside=None, unsafe=False, container=None):
    """Write through a temp folder beside the destination, then rename into place (see io/outputs.py).

    `dest` is the user's -o (None: the default name beside the input, with `tag`). `writer(target,
    produce)` replaces the store's own writer (the sparse container). `check(bytes, path, format)` sees
    the staged output before the rename and may raise to leave nothing behind (a size budget, a run); a writer
    writes the container unless `container` is False (then the output is named like the input). Refuses to
    write over any input file and, without `force`, over any existing output. On any failure, Ctrl-C
    or SIGTERM, nothing is left: no staging folder, no folder we created.
    """
    container = writer is not None if container is None else container
    plan = check_destination(store, dest, force, tag=tag, container=container, name=name, beside=beside,
                             extra_inputs=extra_inputs)
    parent = os.path.dirname(os.path.abspath(plan.path))
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".wcompress-", dir=parent)
    done = False
    try:
        target = os.path.join(stage, os.path.basename(plan.path))
        produced = _write_as(store, plan, target, produce, writer, unsafe)
        if check is not None:
            check(sum(os.path.getsize(f) for f in _walk(produced)), target, plan.format)
        for old in plan.replaces:
            shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
        final = []
        for path in produced:
            rel = os.path.relpath(path, stage)
            out = os.path.join(parent, rel)
            if rel == "checkpoint" and (os.path.exists(out) or not plan.state_file):
                continue  # never replace a state file, nor add one to a folder the user did not name
            os.replace(path, out)
            final.append(out)
        done = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if not done:
            for folder in reversed(plan.created_dirs):  # leave no trace of a failed write
                try:
                    os.rmdir(folder)
                except OSError:
                    break
    return WriteResult(path=plan.path, files=sorted(_walk(final)))


def _write_as(store, plan, target, produce, writer, unsafe):
    """Write in the store's own format, then convert when the output's suffix asks for another."""
    if writer is not None:
        return writer(target, produce)
    if plan.format == store.format:
        return store.write(target, produce)
    if plan.format == "keras-weights-h5" and hasattr(store, "write_weights"):
        return store.write_weights(target, produce)
    native = os.path.join(os.path.dirname(target), "native" + native_suffix(store.format))
    store.write(native, produce)
    produced = convert_keras(native, store.format, target, plan.format, unsafe=unsafe)
    os.remove(native)
    return produced


def _walk(paths):
    """Files in `paths`, folders expanded."""
    files = []
    for f in paths:
        if os.path.isdir(f):
            files += [os.path.join(r, n) for r, _, ns in os.walk(f) for n in ns]
        else:
            files.append(f)
    return files
