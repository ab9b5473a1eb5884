"""What a compression pass is. Passes see TensorInfo metadata and numpy arrays, never files."""

import copy

from wcompress.errors import WcompressError


class TensorSource:
    """A read-only view of a model for passes: tensor metadata in layer order, and one-tensor loads."""

    def __init__(self, store):
        self._store = store
        self.tensors = list(store.tensors)
        # True where the model gives each layer one dtype (Keras): casts must cover whole layers.
        self.casts_whole_layers = bool(getattr(store, "casts_whole_layers", False))
        # The format the output will be written in, and whether a TF1 graph (.meta) comes with it:
        # a pass whose output that format cannot load stock refuses in prepare, before any write.
        self.path = getattr(store, "path", None)
        self.format = getattr(store, "format", None)
        self.has_meta_graph = bool(getattr(store, "meta", None))

    def load(self, name):
        return self._store.load(name)


class Pass:
    """Base class for compression passes.

    `prepare` runs once before any tensor is written (e.g. to compute thresholds from the whole
    model); `apply` then sees each tensor in layer order and returns the array to write, or None to
    drop it. `summary` (a dict) is shown by the command that ran the pass.
    """

    name = ""
    help = ""
    plugin = None

    def new(self, **options):
        """A fresh, configured copy of the registered pass."""
        fresh = copy.copy(self)
        fresh.configure(**options)
        return fresh

    def configure(self, **options):
        if options:
            raise WcompressError(f"pass {self.name!r} takes no options (got {', '.join(options)})")

    def prepare(self, source):
        pass

    def apply(self, info, array):
        return array

    def summary(self):
        return {}
