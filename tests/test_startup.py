"""Files h5py alone can read are read without importing TensorFlow (seconds and half a GB saved)."""

import json
import os
import subprocess
import sys

import pytest

# Runs each command line in one fresh process, then says whether TensorFlow (or Keras) was imported.
RUN_COMMANDS = """
import json, sys
from wcompress.cli import cli
codes = []
for args in json.loads(sys.argv[1]):
    try:
        cli.main(args, standalone_mode=False)
        codes.append(0)
    except SystemExit as exc:
        codes.append(exc.code)
print(json.dumps({"codes": codes, "imported": sorted(m for m in ("tensorflow", "keras") if m in sys.modules)}))
"""


def commands_on(model, folder):
    name = os.path.basename(model)
    container = os.path.join(folder, name + ".wcz.h5")
    return [
        ["profile", model],
        ["pack", model, "-o", container],
        ["report", container],
        ["profile", container],
        ["restore", container, "-o", os.path.join(folder, "restored-" + name)],
        ["sparsify", model, "--method", "relative", "--delta", "0.5", "-o", os.path.join(folder, "sparse-" + name)],
        ["strip", model, "-o", os.path.join(folder, "stripped-" + name)],
        ["fp16", model, "-o", os.path.join(folder, "half-" + name)],
    ]


@pytest.mark.parametrize("kind", ["keras", "weights_h5", "legacy_h5", "weights_only_h5"])
def test_hdf5_and_keras_files_never_import_tensorflow(kind, tiny, real, tmp_path):
    model = {"keras": tiny["keras"], "weights_h5": tiny["weights_h5"],
             "legacy_h5": real["fer"],
             "weights_only_h5": real["mhcnuggets"]}[kind]
    commands = commands_on(model, str(tmp_path))
    done = subprocess.run([sys.executable, "-c", RUN_COMMANDS, json.dumps(commands)], capture_output=True,
                          text=True, check=True, cwd=tmp_path)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["codes"] == [0] * len(commands), done.stderr[-2000:]
    assert result["imported"] == []
