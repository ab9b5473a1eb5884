"""The plugin manager: built-in passes and third-party ones load through the same entry-point group."""

import importlib
import sys
from importlib import metadata

import pluggy

from wcompress import hookspecs
from wcompress.errors import WcompressError

ENTRY_POINT_GROUP = "wcompress.passes"

# Built-in plugins, by entry-point name. They are declared in pyproject.toml under the same group that
# third-party packages use; this list lets a source checkout without installed metadata load them too.
BUILTIN_PLUGINS = {
    "strip": "wcompress_plugins.strip",
    "threshold": "wcompress_plugins.threshold",
    "fp16": "wcompress_plugins.fp16",
    "quantize": "wcompress_plugins.quantize",
    "wanda": "wcompress_plugins.wanda",
}

pm = pluggy.PluginManager("wcompress")
pm.add_hookspecs(hookspecs)

_loaded = False
_passes = {}
_metrics = {}
_origin = {}
_failed = {}


def load_plugins():
    """Load every plugin once: entry points first, then any built-in the metadata did not list."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is None:
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the tool
                _failed[ep.name] = f"{type(exc).__name__}: {exc}"
                print(f"wcompress: warning: plugin {ep.name!r} ({ep.value}) failed to load: {exc}", file=sys.stderr)
                continue
            pm.register(module, name=ep.name)
            _origin[ep.name] = f"entry point {ep.value}" + (f" ({ep.dist.name})" if ep.dist else "")
    for name, module in BUILTIN_PLUGINS.items():
        if pm.get_plugin(name) is None:
            pm.register(importlib.import_module(module), name=name)
            _origin[name] = f"built-in {module}"

    def register(compression_pass):
        if compression_pass.name in _passes:
            raise WcompressError(f"two plugins register a pass named {compression_pass.name!r}")
        _passes[compression_pass.name] = compression_pass

    for plugin in pm.get_plugins():
        metrics = getattr(plugin, "register_metrics", None)
        if metrics is not None:
            metrics(register=lambda metric: _metrics.__setitem__(metric.name, metric))
        impl = getattr(plugin, "register_passes", None)
        if impl is not None:
            before = set(_passes)
            impl(register=register)
            for added in set(_passes) - before:
                _passes[added].plugin = pm.get_name(plugin)


def get_passes():
    load_plugins()
    return dict(_passes)


def get_metrics():
    load_plugins()
    return dict(_metrics)


def get_pass(name):
    passes = get_passes()
    if name not in passes:
        raise WcompressError(f"unknown pass {name!r}; available: {', '.join(sorted(passes)) or 'none'}")
    return passes[name]


def plugin_table():
    """One row per loaded plugin: its name, where it came from, and the passes it registered."""
    load_plugins()
    rows = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin)
        rows.append({
            "plugin": name,
            "source": _origin.get(name, getattr(plugin, "__name__", "?")),
            "module": getattr(plugin, "__name__", type(plugin).__name__),
            "file": getattr(sys.modules.get(getattr(plugin, "__name__", "")), "__file__", None),
            "passes": sorted(p for p, obj in _passes.items() if obj.plugin == name),
        })
    rows += [{"plugin": name, "source": "failed to load", "module": None, "file": None, "passes": [],
              "error": error} for name, error in _failed.items()]
    return sorted(rows, key=lambda r: r["plugin"])
