"""Plan files: exact per-tensor thresholds, written by `sparsify --dry-run` and read by `--plan`."""

import json
import os

import yaml

from .errors import WcompressError


def read_plan(path):
    try:
        with open(path) as fh:
            text = fh.read()
        doc = yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise WcompressError(f"unreadable plan ({str(exc).splitlines()[0]})", path) from exc
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
