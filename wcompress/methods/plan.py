"""Plan files: exact per-tensor thresholds, written by `sparsify --dry-run` and read by `--plan`; or an N:M
pattern and the tensors it applies to ({"pattern": "2:4", "tensors": [...]})."""

import json
import os

import yaml

from wcompress.errors import WcompressError


def read_plan(path):
    try:
        with open(path) as fh:
            text = fh.read()
        doc = yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise WcompressError(f"unreadable plan ({str(exc).splitlines()[0]})", path) from exc
    if isinstance(doc, dict) and "pattern" in doc:
        tensors = doc.get("tensors")
        if not isinstance(doc["pattern"], str) or not isinstance(tensors, list) \
                or not all(isinstance(t, str) for t in tensors):
            raise WcompressError("a pattern plan needs 'pattern' (N:M) and 'tensors' (a list of tensor names)", path)
        return doc.get("method"), {"pattern": doc["pattern"], "tensors": tensors}
    if not isinstance(doc, dict) or not isinstance(doc.get("thresholds"), dict):
        raise WcompressError("plan needs a 'thresholds' mapping of tensor name to threshold", path)
    try:
        thresholds = {str(k): float(v) for k, v in doc["thresholds"].items()}
    except (TypeError, ValueError) as exc:
        raise WcompressError("plan thresholds must be numbers", path) from exc
    return doc.get("method"), thresholds


def write_plan(path, document, force=False):
    if os.path.exists(path) and not force:
        raise WcompressError("plan file exists; pass --force to overwrite it", path)
    text = yaml.safe_dump(document, sort_keys=False) if path.endswith((".yaml", ".yml")) else json.dumps(
        document, indent=2)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def literal_glob(name):
    """A glob (fnmatch) matching exactly this tensor name: its wildcard characters bracketed."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def pattern_selection(plan):
    """sparsify's options replaying a pattern plan: the pattern, on exactly its tensors."""
    return {"pattern": plan["pattern"], "include": tuple(literal_glob(n) for n in plan["tensors"]), "min_size": 0}
