"""The wcompress sparse container: one HDF5 file holding every tensor in its smallest encoding and
everything else needed to rebuild the original model (see docs/format.md). layout.py says what is on disk,
writer.py writes it, reader.py reads it, restore.py writes the original model back; encodings.py,
coders.py and quantization.py are how values become the streams stored."""

from wcompress.formats.container.layout import MAGIC, VERSION
from wcompress.formats.container.reader import ContainerStore, is_container
from wcompress.formats.container.restore import restore
from wcompress.formats.container.writer import ContainerWriter

__all__ = ["ContainerStore", "ContainerWriter", "is_container", "restore", "MAGIC", "VERSION"]
