"""strip: drop optimizer slots, step counters and metric state; keep everything the model needs."""

from wcompress.hookspecs import hookimpl
from wcompress.formats import TRAINING_STATE
from wcompress.methods.passes import Pass


class StripPass(Pass):
    name = "strip"
    help = "Drop optimizer slots, step counters and metric state."

    def prepare(self, source):
        self.dropped = []

    def apply(self, info, array):
        if info.role in TRAINING_STATE:
            self.dropped.append(info.name)
            return None
        return array

    def summary(self):
        return {"dropped_tensors": len(self.dropped)}


@hookimpl
def register_passes(register):
    register(StripPass())
