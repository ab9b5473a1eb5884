"""The user's own code, imported by name: --custom-objects (what Keras needs to load a model) and
--model-code (a function returning the Keras model a weights-only file is loaded into)."""

import functools
import inspect
import os
import re
import sys

from wcompress.errors import WcompressError
from wcompress.formats.tfenv import load as load_tensorflow


@functools.lru_cache(maxsize=None)
def _custom_objects_from(spec):
    """{name: object} from a FILE.py or module (its custom_objects dict, else its public functions and
    classes) or from module:attr (a dict, or one object); imported once per process."""
    module, attr = _import_user_code(spec, "--custom-objects")
    found = getattr(module, attr or "custom_objects", None)
    if attr and found is None:
        raise WcompressError(f"--custom-objects: {module.__name__} has no attribute {attr!r}")
    if isinstance(found, dict):
        objects = dict(found)
    elif found is not None and not inspect.ismodule(found):
        objects = {attr or found.__name__: found}
    else:
        source = found or module
        objects = {name: obj for name, obj in vars(source).items() if not name.startswith("_")
                   and (inspect.isfunction(obj) or inspect.isclass(obj))
                   and getattr(obj, "__module__", None) == source.__name__}
    if not objects:
        raise WcompressError("--custom-objects: defines no public function or class (nor a custom_objects dict)",
                             spec)
    # A model saved again after loading names each object by its own name, e.g. a Keras 2 '<lambda>'
    # activation becomes 'scaled_tanh': knowing both keeps the merged or converted model loadable.
    for obj in list(objects.values()):
        name = getattr(obj, "__name__", None)
        if name and name.isidentifier():
            objects.setdefault(name, obj)
    return objects


def _import_user_code(spec, option):
    """FILE.py[:attr] or module[:attr] -> (module, attr or None); errors name `option` (--custom-objects,
    --model-code)."""
    import importlib
    import importlib.util

    target, _, attr = spec.rpartition(":") if ":" in spec else (spec, "", "")
    try:
        if target.endswith(".py") or os.sep in target:
            if not os.path.isfile(target):
                raise WcompressError(f"{option}: no such Python file", target)
            name = (f"wcompress_{option.strip('-').replace('-', '_')}_"
                    + re.sub(r"\W", "_", os.path.splitext(os.path.basename(target))[0]))
            module_spec = importlib.util.spec_from_file_location(name, target)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module  # dataclasses and pickling look their module up by name
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            return module, attr or None
        return importlib.import_module(target), attr or None
    except WcompressError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code failing to import is reported, in one line
        from wcompress.errors import root_cause

        raise WcompressError(f"{option}: cannot import it ({type(exc).__name__}: {root_cause(exc)})",
                             spec) from exc


def resolve_custom_objects(custom_objects):
    """None, a dict, or a --custom-objects spec (FILE.py, module, module:attr) -> a dict or None."""
    if custom_objects is None or isinstance(custom_objects, dict):
        return custom_objects
    return _custom_objects_from(str(custom_objects))


def custom_object_scope(custom_objects):
    """Make the objects visible to every Keras load inside the block (also the conversions of io/outputs)."""
    import contextlib

    objects = resolve_custom_objects(custom_objects)
    if not objects:
        return contextlib.nullcontext()
    load_tensorflow()  # quiet, before Keras imports it
    import keras

    return keras.saving.custom_object_scope(objects)


@functools.lru_cache(maxsize=None)
def _model_function(spec):
    """The function of a --model-code module:function (or FILE.py:function); imported once per process."""
    module, attr = _import_user_code(spec, "--model-code")
    if not attr:
        raise WcompressError("--model-code: name the function, as module:function or FILE.py:function", spec)
    fn = getattr(module, attr, None)
    if fn is None:
        raise WcompressError(f"--model-code: defines no function {attr!r}", spec)
    if not callable(fn):
        raise WcompressError(f"--model-code: {attr} is not a function (a {type(fn).__name__})", spec)
    return fn


def model_from_code(spec):
    """Call the --model-code function (no arguments): a new, built Keras model."""
    load_tensorflow()  # quiet, before Keras imports it
    import keras

    fn = _model_function(spec)
    name = getattr(fn, "__name__", spec.rpartition(":")[2])
    try:
        model = fn()
    except Exception as exc:  # noqa: BLE001 - the user's code failing is reported, in one line
        from wcompress.errors import root_cause

        raise WcompressError(f"--model-code: {name}() failed ({type(exc).__name__}: {root_cause(exc)})",
                             spec) from exc
    if not isinstance(model, keras.Model):
        kind = "None" if model is None else f"a {type(model).__module__}.{type(model).__name__}"
        raise WcompressError(f"--model-code: {name}() returned {kind}, not a Keras model (keras.Model)", spec)
    try:
        inputs = model.inputs
    except AttributeError:
        inputs = None
    if not inputs:
        raise WcompressError(f"--model-code: {name}() returned a model without defined inputs (a subclassed or "
                             "unbuilt model): build it on keras.Input(...)", spec)
    return model
