"""A damaged byte in an HDF5 file's metadata can crash the HDF5 library (SIGSEGV) or make it spin
forever while reading an attribute, and no Python code can catch either. So before we read an HDF5
file in this process, a child process walks its whole structure (every group, dataset header and
attribute, no tensor data) under a time limit: a crash or a hang there is a one-line error here.

Also here: the checks that keep every path named inside an HDF5 file data, never a place we read from."""

import os
import signal
import subprocess
import sys

import h5py

from ..errors import WcompressError

_CHECKED = set()  # (path, size, mtime) of files already walked by this process
_WALK = r"""
import sys
import h5py

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
        pass  # Python-level errors are reported by the reader itself; only crashes and hangs matter here

try:
    handle = h5py.File(sys.argv[1], "r")
except Exception:
    sys.exit(0)
walk(handle, 0)
"""


def check_structure(path):
    """Raise a one-line error if reading `path`'s HDF5 structure crashes or hangs the HDF5 library."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key in _CHECKED:
        return
    limit = max(60, stat.st_size // (20 * 2**20))  # generous: a loaded machine must not fail a sound file
    try:
        child = subprocess.run([sys.executable, "-c", _WALK, path], capture_output=True, timeout=limit,
                               env=dict(os.environ, PYTHONWARNINGS="ignore"))
    except subprocess.TimeoutExpired as exc:
        raise WcompressError(f"damaged HDF5 file: reading its structure did not finish in {limit} s", path) from exc
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        raise WcompressError(f"damaged HDF5 file: reading its structure crashed the HDF5 library ({name})", path)
    _CHECKED.add(key)


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
