"""The only code that knows file formats. `open_model` detects the format and returns a ModelStore."""

import os
import zipfile

from wcompress.errors import WcompressError, warn
from wcompress.formats.outputs import suffix_format
from wcompress.formats.store import ModelStore, WriteResult
from wcompress.formats.writing import write_safely
from wcompress.formats.tensors import ROLES, TRAINING_STATE, TensorInfo, read_order_file

__all__ = ["open_model", "write_safely", "ModelStore", "WriteResult", "TensorInfo", "ROLES", "TRAINING_STATE"]


def open_model(path, order_file=None):
    """Open any supported model lazily: the tensor index is read, no tensor values are."""
    path = os.fspath(path)
    sequence = read_order_file(order_file) if order_file else None
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb")):
        from wcompress.formats.checkpoint import SavedModelStore

        return SavedModelStore(path, sequence)
    from wcompress.formats.checkpoint import CheckpointStore, find_checkpoint_prefix

    prefix = find_checkpoint_prefix(path)
    if prefix is not None:
        return CheckpointStore(path, prefix, sequence)
    if not os.path.exists(path):
        raise WcompressError("no such file or folder (nor a checkpoint prefix with a .index file)", path)
    if os.path.isdir(path):
        raise WcompressError("folder holds no checkpoint (.index) and no saved_model.pb", path)
    with open(path, "rb") as fh:
        magic = fh.read(8)
    _warn_misnamed(path, "keras" if magic.startswith(b"PK") else "h5" if magic == b"\x89HDF\r\n\x1a\n" else None)
    if magic.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            raise WcompressError("truncated or damaged zip archive", path)
        from wcompress.formats.keras_h5 import KerasZipStore

        return KerasZipStore(path, sequence)
    if magic == b"\x89HDF\r\n\x1a\n":
        from wcompress.formats.container import ContainerStore, is_container
        from wcompress.formats.h5check import check_structure

        check_structure(path)
        from wcompress.formats.keras_h5 import H5Store

        if is_container(path):
            return ContainerStore(path)
        return H5Store(path, layer_sequence=sequence)
    raise WcompressError(
        "unrecognised model format (expected a TF checkpoint, SavedModel folder, .keras or Keras .h5)", path
    )


def _warn_misnamed(path, kind):
    """Keras picks its reader by suffix: a file whose suffix lies about its content will not load there."""
    named = suffix_format(path)
    if kind == "keras" and named not in (None, "keras"):
        warn("is a Keras 3 .keras archive (zip) although named like HDF5: Keras will load it only as .keras", path)
    elif kind == "h5" and named == "keras":
        warn("is an HDF5 file although named .keras: Keras will load it only as .h5 (outputs named .keras are "
             "converted to a real .keras archive)", path)
