"""A container back in its original format, written safely and opened with the stock reader of that format
before it is renamed into place."""

import os
import shutil
import tempfile

from wcompress.errors import warn
from wcompress.formats.container.quantization import quantized_label
from wcompress.formats.container.reader import ContainerStore


def lossy_values(container):
    """What restoring gives back that is not the original values: every lossy width, in one line each."""
    entries = list(container.entries.values())
    quantized = [e for e in entries if e.get("quantized")]
    if quantized:
        kinds = sorted({quantized_label(e["quantized"]) for e in quantized})
        yield (f"{_tensors_were(len(quantized))} stored as {'/'.join(kinds)} codes: the restored "
               "tensors are dequantized (codes x channel scale or step), not the original values")
    halved = [e for e in entries if not e.get("quantized") and e.get("value_dtype") == "float16"
              and e.get("dtype") in ("float32", "float64")]
    if halved:
        yield (f"{_tensors_were(len(halved))} stored as float16: the restored tensors are their values rounded to "
               "float16, not the original values")


def _tensors_were(count):
    return f"{count} tensor was" if count == 1 else f"{count} tensors were"


def restore(container_path, dest, force=False, unsafe=False):
    """Write the container back in its original format (or another Keras format, by the output's suffix).

    With no `dest`, the output goes beside the container under the original's name, tagged `restored`.
    """
    from wcompress.formats.writing import write_safely
    from wcompress.formats.verify import verify_output

    container = ContainerStore(container_path)
    work = tempfile.mkdtemp(prefix="wcompress-restore-")
    try:
        store = container.original(work)
        # The name recorded in the file is data: only a plain file name is used, never a path.
        name = os.path.basename(container.source_name.replace("\\", "/"))
        if name in ("", ".", ".."):
            name = "model.ckpt" if store.format.endswith("checkpoint") else None
            if dest is None and store.format.endswith("checkpoint"):  # the model was a folder: so is its copy
                dest = os.path.splitext(os.path.abspath(container_path))[0] + "-restored" + os.sep
        expected = {t.name: (t.shape, t.dtype) for t in store.tensors}

        def verify(nbytes, target, fmt):  # before the rename: the stock reader must open what we wrote
            verify_output(target, fmt, expected if fmt == store.format else None, container_path)

        written = write_safely(store, dest, lambda info: store.load(info.name), force=force, tag="restored",
                               name=name, beside=container_path, extra_inputs=[container_path], unsafe=unsafe,
                               check=verify)
        for message in lossy_values(container):  # once written: a damaged tensor's error comes alone
            warn(message, container_path)
        return written
    finally:
        shutil.rmtree(work, ignore_errors=True)
