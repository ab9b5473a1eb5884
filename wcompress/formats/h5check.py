"""A damaged byte in an HDF5 file's metadata can crash the HDF5 library (SIGSEGV, SIGABRT on a double
free) or make it spin forever while reading an attribute, and no Python code can catch either. So
before we read an HDF5 file in this process, a guarded child (io/child.py: dies with us, killed with
its process group on every exit path, stopped by its CPU time) opens it, lists its links and walks
its whole structure (every group, dataset header and attribute, no tensor data): a crash or a spin
there is a one-line error here, and this process never lists links itself.

Also here: the checks that keep every path named inside an HDF5 file data, never a place we read from."""

import os
import zlib

import h5py

from wcompress.errors import WcompressError
from wcompress.formats import child

# The walk of a sound file costs milliseconds of CPU whatever the machine's load; a damaged one that
# makes HDF5 spin burns this in seconds. Larger files get a little more (chunk indexes are walked).
CPU_SECONDS = 3
CPU_SECONDS_PER_GIB = 5
# Only for a child that blocks without spinning (it cannot, on a regular file): not the usual stop.
WALL_SECONDS = 600
_CHECKED = {}  # identity of a file already walked by this process -> the walk's findings
_CONTENT_KEY_BYTES = 64 * 2**20


def walk_structure(path):
    """Open `path`, list its links, then touch every group, dataset header and attribute (no tensor data).
    Returns what the parent needs: the first link to another file, or why the links cannot be listed.
    Python-level errors are the reader's to report; only crashes and spins matter here."""
    try:
        handle = h5py.File(path, "r")
    except Exception:
        return {}
    try:
        findings = _list_links(handle)
        _walk(handle)
        return findings
    finally:
        try:
            handle.close()
        except Exception:
            pass


def _list_links(h5):
    found = []

    def check(name, link):
        if isinstance(link, h5py.ExternalLink) and not found:
            found.append(f"{name} -> {link.filename}:{link.path}")

    try:
        h5.visititems_links(check)
    except Exception as exc:
        # h5py reports a link it cannot decode from inside its C callback as a SystemError.
        cause = str(exc.__context__ or exc).strip().splitlines() or [type(exc).__name__]
        return {"links_error": cause[0][:200]}
    return {"external_link": found[0]} if found else {}


def _walk(root):
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

    walk(root, 0)


def check_structure(path, name=None):
    """Raise a one-line error (naming `name`, default `path`) if reading `path`'s HDF5 structure crashes or
    spins the HDF5 library, or if the file links to another file."""
    name = path if name is None else name
    key = _identity(path)
    findings = _CHECKED.get(key)
    if findings is None:
        size = os.path.getsize(path)
        cpu = CPU_SECONDS + CPU_SECONDS_PER_GIB * size / 2**30
        outcome = child.run(walk_structure, [os.fspath(path)], cpu_seconds=cpu, wall_seconds=WALL_SECONDS)
        if outcome.cpu_exceeded:
            raise WcompressError(f"damaged HDF5 file: reading its structure did not finish within {int(max(1, cpu))} s "
                                 "of CPU time", name)
        if outcome.wall_exceeded:
            raise WcompressError(f"damaged HDF5 file: reading its structure did not finish in {WALL_SECONDS} s", name)
        if outcome.signal:
            raise WcompressError(f"damaged HDF5 file: reading its structure crashed the HDF5 library "
                                 f"({outcome.signal})", name)
        findings = outcome.value if isinstance(outcome.value, dict) else {}
        _CHECKED[key] = findings
    if findings.get("links_error"):
        raise WcompressError(f"damaged HDF5 file: its links cannot be listed ({findings['links_error']})", name)
    if findings.get("external_link"):
        raise WcompressError(f"HDF5 link to another file refused ({findings['external_link']})", name)


def _identity(path):
    """What a walk's result is remembered by: the file's place and times, and for files of a usual size its
    content too (a file rewritten within one timestamp tick must be walked again)."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if stat.st_size <= _CONTENT_KEY_BYTES:
        with open(path, "rb") as fh:
            key += (zlib.crc32(fh.read()),)
    return key


def foreign_storage(ds):
    """Why a dataset's values would come from outside this file (None when they do not): HDF5 lets a
    dataset keep its raw data in any named file (external storage) or map other files (virtual
    datasets), so a crafted model could make us copy an arbitrary file of this machine into an output."""
    if ds.external:
        return "keeps its data in an external file"
    if ds.is_virtual:
        return "is a virtual dataset mapping other files"
    return None
