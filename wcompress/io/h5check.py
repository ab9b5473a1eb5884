"""A damaged byte in an HDF5 file's metadata can crash the HDF5 library (SIGSEGV) or make it spin
forever while reading an attribute, and no Python code can catch either. So before we read an HDF5
file in this process, a child process walks its whole structure (every group, dataset header and
attribute, no tensor data) under a time limit: a crash or a hang there is a one-line error here.

Also here: the checks that keep every path named inside an HDF5 file data, never a place we read from."""

import faulthandler
import os
import select
import signal
import subprocess
import sys
import threading

import h5py

from ..errors import WcompressError

_CHECKED = set()  # (path, size, mtime) of files already walked by this process
_WALK = r"""
import sys
from wcompress.io.h5check import walk_structure

walk_structure(sys.argv[1])
"""


def walk_structure(path):
    """Touch every group, dataset header and attribute of `path` (no tensor data); Python-level errors are
    the reader's to report, only crashes and hangs matter here."""
    seen = set()

    def walk(obj, depth):
        if depth > 64:
            return
        try:
            address = h5py.h5o.get_info(obj.id).addr
            if address in seen:
                return
            seen.add(address)
            for key in obj.attrs:
                obj.attrs[key]
            if isinstance(obj, h5py.Dataset):
                obj.shape, obj.dtype, obj.chunks, obj.compression, obj.id.get_storage_size()
                return
            for key in obj:
                walk(obj[key], depth + 1)
        except Exception:
            pass

    try:
        handle = h5py.File(path, "r")
    except Exception:
        return
    walk(handle, 0)


def check_structure(path):
    """Raise a one-line error if reading `path`'s HDF5 structure crashes or hangs the HDF5 library."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key in _CHECKED:
        return
    limit = max(60, stat.st_size // (20 * 2**20))  # generous: a loaded machine must not fail a sound file
    returncode = _walk_forked(path, limit) if _can_fork() else _walk_in_new_process(path, limit)
    if returncode is None:
        raise WcompressError(f"damaged HDF5 file: reading its structure did not finish in {limit} s", path)
    if returncode < 0:
        name = signal.Signals(-returncode).name
        raise WcompressError(f"damaged HDF5 file: reading its structure crashed the HDF5 library ({name})", path)
    _CHECKED.add(key)


def _can_fork():
    """A fork copies this process in milliseconds; only safe while no other thread may hold a lock the
    child needs (TensorFlow starts thread pools), so otherwise a new interpreter does the walk."""
    from .tfenv import loaded

    return hasattr(os, "fork") and threading.active_count() == 1 and not loaded()


def _walk_forked(path, limit):
    """The child's exit status as subprocess reports it (negative: killed by that signal); None on timeout."""
    done_reading, done_writing = os.pipe()  # the child's end closes when it exits, however it exits
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code, never flushes the parent's buffers
        code = 0
        try:
            os.close(done_reading)
            faulthandler.disable()  # a crash here is the expected outcome of a damaged file, not news
            with open(os.devnull, "w") as quiet:
                os.dup2(quiet.fileno(), 1)
                os.dup2(quiet.fileno(), 2)
            walk_structure(path)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(done_writing)
    try:
        finished, _, _ = select.select([done_reading], [], [], limit)
    finally:
        os.close(done_reading)
    if not finished:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return None
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _walk_in_new_process(path, limit):
    try:
        child = subprocess.run([sys.executable, "-c", _WALK, path], capture_output=True, timeout=limit,
                               env=dict(os.environ, PYTHONWARNINGS="ignore"))
    except subprocess.TimeoutExpired:
        return None
    return child.returncode


def foreign_storage(ds):
    """Why a dataset's values would come from outside this file (None when they do not): HDF5 lets a
    dataset keep its raw data in any named file (external storage) or map other files (virtual
    datasets), so a crafted model could make us copy an arbitrary file of this machine into an output."""
    if ds.external:
        return "keeps its data in an external file"
    if ds.is_virtual:
        return "is a virtual dataset mapping other files"
    return None


def refuse_external_links(h5, path):
    """A link to another file is a path inside the file we read: data, never a place to read from."""
    found = []

    def check(name, link):
        if isinstance(link, h5py.ExternalLink) and not found:
            found.append(f"{name} -> {link.filename}:{link.path}")

    try:
        h5.visititems_links(check)
    except (SystemError, RuntimeError, KeyError, OSError, ValueError) as exc:
        # h5py reports a link it cannot decode from inside its C callback as a SystemError.
        cause = str(exc.__context__ or exc).strip().splitlines() or [type(exc).__name__]
        raise WcompressError(f"damaged HDF5 file: its links cannot be listed ({cause[0][:200]})", path) from exc
    if found:
        raise WcompressError(f"HDF5 link to another file refused ({found[0]})", path)
