"""Floating dtypes as users save them: float16/32/64, and bfloat16, the dtype of modern checkpoints.

numpy has no bfloat16; `ml_dtypes` (which TensorFlow and JAX use) adds it as a 2-byte type whose kind is
'V', so `dtype.kind == "f"` and `np.issubdtype(dtype, np.floating)` say no. Ask `is_float` instead.
Keras 3 stores a bfloat16 variable in HDF5 as a 2-byte opaque type with the attribute dtype="bfloat16";
`dataset_dtype` reads that back, and a bfloat16 array written through h5py becomes that opaque type.
"""

import ml_dtypes
import numpy as np

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def is_float(dtype):
    """Whether values of this dtype are floating point numbers (bfloat16 included)."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or dtype == BFLOAT16


def is_numeric(dtype):
    dtype = np.dtype(dtype)
    return dtype.kind in "fiub" or dtype == BFLOAT16


def dataset_dtype(ds):
    """The dtype an HDF5 dataset holds, with Keras's opaque bfloat16 recognised."""
    if ds.dtype.kind == "V" and ds.dtype.itemsize == 2 and says_bfloat16(ds.attrs.get("dtype")):
        return BFLOAT16
    return ds.dtype


def as_dataset_values(array, ds):
    """A dataset's values as read by h5py, viewed as the dtype `dataset_dtype` reports."""
    dtype = dataset_dtype(ds)
    return array.view(dtype) if dtype != array.dtype else array


def computing(array):
    """The values in a dtype numpy computes with exactly: bfloat16 widened to float32 (lossless)."""
    return array.astype(np.float32) if array.dtype == BFLOAT16 else array


def says_bfloat16(attribute):
    """Whether an HDF5 `dtype` attribute (str or bytes) names bfloat16."""
    return attribute in ("bfloat16", b"bfloat16")
