"""The package's folders are its layers, and imports run downward only (no circles): every `import` of a
wcompress module, at the top of a file or inside a function, from a module to one in its own layer or
below. docs/design.md draws the same tree."""

import ast
import os

import wcompress

PACKAGE = os.path.dirname(wcompress.__file__)
# Lowest first. A package's own __init__ is the entry to its layer (formats/__init__.py's open_model
# knows the container too).
LAYERS = [
    ("wcompress.errors", "wcompress.progress"),
    ("wcompress.formats.",),
    ("wcompress.formats.container", "wcompress.formats"),
    ("wcompress.runtime",),
    ("wcompress.methods", "wcompress.hookspecs", "wcompress.plugins"),
    ("wcompress.workflows",),
    ("wcompress.api",),
    ("wcompress.cli", "wcompress.render", "wcompress.plot", "wcompress.samples", "wcompress"),
]


def _modules():
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = "wcompress." + os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


def _layer(module):
    """The highest layer whose prefix names `module` most exactly."""
    best = None
    for number, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            exact = module == prefix  # a prefix ending in "." names only what is inside
            inside = module.startswith(prefix if prefix.endswith(".") else prefix + ".")
            if exact or inside:
                length = len(prefix) + (1 if exact else 0)
                if best is None or length > best[1]:
                    best = (number, length)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and to docs/design.md"
    return best[0]


def _imports(modules):
    edges = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
        with open(path) as fh:
            tree = ast.parse(fh.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    if target in modules and target != module:
                        edges[module].add(target)
            elif isinstance(node, ast.Import):
                edges[module].update(a.name for a in node.names if a.name in modules and a.name != module)
    return edges


def test_imports_run_downward_only():
    modules = _modules()
    upward = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
              for m, targets in _imports(modules).items() for t in sorted(targets) if _layer(t) > _layer(m)]
    assert upward == []


def test_no_import_circles():
    edges = _imports(_modules())
    circles = []

    def visit(node, path, seen):
        for target in edges[node]:
            if target == path[0]:
                circles.append(" -> ".join(path + [target]))
            elif target not in seen and target > path[0]:  # each circle once, from its smallest module
                visit(target, path + [target], seen | {target})

    for start in edges:
        visit(start, [start], {start})
    assert circles == []


def test_design_doc_names_every_module():
    with open(os.path.join(os.path.dirname(PACKAGE), "docs", "design.md")) as fh:
        design = fh.read()
    missing = [os.path.relpath(p, os.path.dirname(PACKAGE)) for m, p in _modules().items()
               if os.path.basename(p) != "__init__.py" and os.path.basename(p) not in design]
    assert missing == []
