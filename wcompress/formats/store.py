"""The common face of every format: a lazy tensor index, one-tensor loads, and a streaming writer."""

import os
from dataclasses import dataclass, field



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
        self.quantization_modes = {}  # layer -> Keras's quantization mode ("int8", "int4/128"), where known

    def load(self, name):
        raise NotImplementedError

    def files(self):
        """Every file the model consists of (for sizes and for never writing over the input)."""
        raise NotImplementedError

    @property
    def bytes(self):
        return sum(os.path.getsize(f) for f in self.files())

    def write(self, target, produce):
        """Write the model to `target`, tensor by tensor: produce(info) gives the array or None to drop it."""
        raise NotImplementedError


