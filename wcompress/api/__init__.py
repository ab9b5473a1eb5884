"""The public Python API: every command as a function, over a path or an in-memory `keras.Model`.

    import wcompress
    result = wcompress.sparsify(model, method="relative", delta=0.5)   # model: a keras.Model or a path
    smaller = result.model                                              # a new keras.Model; `model` untouched
    wcompress.pack(model, values="int4", data=x, output="m.h5")

Each function takes the command's options as keyword arguments and returns a result with `.to_dict()`,
which is exactly what the command prints with `--json`. Functions never print: progress is opt-in
(`progress=True`, or a callable), problems raise `WcompressError`, and warnings go through `warnings` as
`WcompressWarning`. An in-memory model is saved to a private temporary `.keras` (the caller's object is
never modified); without `output=` its result comes back as a new `keras.Model` in `result.model`, and
with `output=` the file is written under the same output policy as the CLI. Data given as arrays is
written to a private .npz for the same reason: worker processes and Ray read files.
"""

from wcompress.api.files import average, export, fp16, merge, pack, profile, quantize, report, restore, sparsify, strip
from wcompress.api.inputs import as_examples
from wcompress.api.results import DocumentResult, EvaluateResult, RestoreResult, SparsifyResult
from wcompress.api.tuning import autotune, compress, ensemble_search, evaluate, sweep

__all__ = ["profile", "report", "strip", "sparsify", "pack", "restore", "quantize", "fp16", "average", "merge",
           "export", "evaluate", "sweep", "autotune", "compress", "ensemble_search", "as_examples", "DocumentResult",
           "EvaluateResult", "RestoreResult", "SparsifyResult"]
