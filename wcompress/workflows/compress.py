"""compress: the smallest file that holds a quality budget on examples the search never saw, every lever on.

It is autotune with the choices made for the user: the container, every sparsification method (the
calibrated ones on the tuning examples), values as ecq levels (the coarsest QP that holds), int8, int4 and
float16 (GPTQ-rounded), per-layer levels and per-layer value widths (for ecq: a coarser QP per layer), searched cheapest and most promising first so that a time limit still ends with
a good file. What it refuses to do quietly: judge a budget on examples it tuned on. Data too small to hold
a part out is refused unless the caller gives a validation set or says `no_holdout` (the result is then
labelled unverified); a result that fails the budget on the held-out part is never written.
"""

import os
import tempfile

import numpy as np

from wcompress.errors import WcompressError, warn
from wcompress.formats.outputs import suffix_format
from wcompress.workflows.autotune import MIN_HELD_OUT, autotune, sparsifier_methods
from wcompress.workflows.scoring import split_examples
from wcompress.workflows.variants import evaluator_for

# Most promising first: ecq spends the fewest bits for a given error (entropy-coded levels at any step), int8
# loses least per byte saved and int4 halves it again; float16 is the fallback.
VALUE_ORDER = ("ecq", "int8", "int4", "float16")
# The calibrated methods keep most at a given sparsity; magnitude (relative) is the cheapest to evaluate.
METHOD_ORDER = ("relative", "sparsegpt", "wanda", "flat", "triangular")


def compress(model, spec, max_drop, dest=None, plan_path=None, relative=True, holdout=0.3, validation=None,
             no_holdout=False, jobs=1, cluster=None, time_limit=None, max_evals=500, force=False,
             show_progress=False, best_effort=False):
    """The smallest container (or, for an output named .keras, .weights.h5, .hdf5, .tflite or a folder, the
    best file of that format) within `max_drop`, judged on held-out examples. Returns autotune's report
    with `verified` (judged on examples the search never saw) and `output_kind`. `best_effort`: autotune's."""
    if no_holdout and validation:
        raise WcompressError("--no-holdout and --validation both say what judges the result: give one")
    count = evaluator_for(spec).examples
    verified = not no_holdout
    if validation is None and not no_holdout:
        held = int(round(count * holdout)) if 0 < holdout < 1 else 0
        if held < MIN_HELD_OUT or count - held < MIN_HELD_OUT:
            raise WcompressError(f"{count} examples are too few to hold {holdout:g} out (at least {MIN_HELD_OUT} "
                                 "per part), and a budget judged on the examples it was tuned on is not a budget: "
                                 "pass --validation FILE, or --no-holdout to accept an unverified result",
                                 spec.data)
    kind = _output_kind(dest)
    dest = dest if dest is not None else _default_output(model)
    plan_path = plan_path or str(dest).rstrip("/" + os.sep) + ".plan.json"
    with tempfile.TemporaryDirectory(prefix="wcompress-compress-") as work:
        calibration = _tuning_examples(spec, holdout, validation, no_holdout, os.path.join(work, "tuning.npz"))
        calibrates = _calibrates(model, calibration, spec)
        registered = sparsifier_methods(calibrated=calibrates)
        calibration = calibration if calibrates else None
        methods = [m for m in METHOD_ORDER if m in registered] + [m for m in registered if m not in METHOD_ORDER]
        container = kind == "container"
        result = autotune(model, spec, max_drop, dest, plan_path, relative=relative, jobs=jobs, force=force,
                          methods=methods, holdout=0 if no_holdout or validation else holdout,
                          validation=validation, target="bytes" if container else "sparsity", pack=container,
                          values=VALUE_ORDER if container else "float32", calibration=calibration,
                          show_progress=show_progress, cluster=cluster, time_limit=time_limit, max_evals=max_evals,
                          best_effort=best_effort)
    result["verified"] = verified
    result["output_kind"] = kind
    if not container and result.get("compare") is None:  # how the file of that format compares
        from wcompress.formats import open_model
        from wcompress.workflows.autotune import comparisons

        result["compare"] = comparisons(open_model(model), spec, None)
    if not verified:
        result["examples"] += " (unverified: --no-holdout)"
    return result


def _calibrates(model, calibration, spec):
    """Whether the model has layers whose inputs can be captured (GPTQ, wanda, sparsegpt): some graphs hide
    their products inside functions. Without, int8/int4 round to nearest and the calibrated methods are
    left out, with a warning. The statistics are kept for the search in this process."""
    from wcompress.workflows.variants import model_hessians

    try:
        model_hessians(model, calibration, spec)
        return True
    except WcompressError as error:
        warn(f"compress calibrates nothing in this model ({error.message}): int8/int4 values round to nearest, "
             "and wanda and sparsegpt are left out")
        return False


def parse_duration(text):
    """Seconds from '90', '90s', '20m' or '1.5h' (a number is seconds)."""
    if text is None or isinstance(text, (int, float)):
        return text
    units = {"s": 1, "m": 60, "h": 3600}
    value, unit = (text[:-1], text[-1].lower()) if text and text[-1].lower() in units else (text, "s")
    try:
        seconds = float(value) * units[unit]
    except ValueError:
        raise WcompressError(f"--time-limit takes a duration such as 90s, 20m or 1.5h, not {text!r}") from None
    if seconds <= 0:
        raise WcompressError(f"--time-limit must be positive, not {text!r}")
    return seconds


def _output_kind(dest):
    """container (a plain .h5, or no -o), tflite, a Keras format by suffix (.keras, .weights.h5, .hdf5), or
    native: the input's own format (a checkpoint prefix, a folder)."""
    if dest is None:
        return "container"
    name = os.path.basename(str(dest)).lower()
    if name.endswith(".tflite"):
        return "tflite"
    if name.endswith(".h5") and not name.endswith(".weights.h5"):
        return "container"
    return suffix_format(str(dest)) or "native"


def _default_output(model):
    """Beside the input: NAME.compressed.h5 (a folder model: FOLDER.compressed.h5)."""
    base = os.path.normpath(str(model))
    stem = base[:-len(".weights.h5")] if base.endswith(".weights.h5") else os.path.splitext(base)[0]
    return stem + ".compressed.h5"


def _tuning_examples(spec, holdout, validation, no_holdout, path):
    """The examples the search may see, as calibration inputs for GPTQ, Wanda and SparseGPT: the tuning
    part (never the held-out one), inputs only."""
    data = evaluator_for(spec).data
    count = evaluator_for(spec).examples
    index = np.arange(count) if validation or no_holdout else split_examples(count, holdout)[0]
    np.savez(path, **{k: v[index] for k, v in data.items() if k != "y"})
    return path
