"""The same command on the same input writes the same bytes: every writing command, run twice on every
input format, into two folders, gives byte-identical files (users diff artifacts, cache them by content
hash and check a registry against a rebuild)."""

import hashlib
import os
import time

import pytest
from helpers import run_cli
from test_matrix import INPUTS, _copy_input, matrix_inputs  # noqa: F401 - the fixture is used by name

COMMANDS = {
    "strip": ["strip"],
    "sparsify": ["sparsify", "--method", "relative", "--delta", "0.5", "--min-size", "0"],
    "sparsify-pack": ["sparsify", "--method", "relative", "--delta", "0.5", "--pack", "--values", "float16"],
    "fp16": ["fp16"],
    "pack": ["pack"],
    "pack-int4": ["pack", "--values", "int4"],
    "quantize": ["quantize"],
    "average": ["average"],
    "restore": ["restore"],
}


def _files(folder):
    """{relative path: sha256} of every file under `folder`."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                found[os.path.relpath(path, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return found


def _twice(args, tmp_path, suffix=""):
    """Run `args -o run1/... ` and `args -o run2/...`: both exit codes, and both folders' files."""
    outcomes = []
    for run in ("run1", "run2"):
        if run == "run2":
            _next_tick()
        target = str(tmp_path / run) + ("/" + suffix if suffix else "/")
        result = _invoke(*args, "-o", target)
        outcomes.append((result.exit_code, _files(tmp_path / run) if os.path.exists(tmp_path / run) else {}))
    return outcomes


def _next_tick():
    """Wait for the next even second: a time stamped into a file (HDF5 object times and Keras's date_saved
    count seconds, zip entries two) then differs between the two runs, and the test sees it."""
    start = int(time.time()) // 2
    while int(time.time()) // 2 == start:
        time.sleep(0.05)


def _invoke(*args):
    from click.testing import CliRunner

    from wcompress.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("key", sorted(INPUTS))
def test_two_runs_write_identical_bytes(matrix_inputs, tmp_path, key, command):  # noqa: F811
    src = _copy_input(matrix_inputs[key], str(tmp_path / "in"))
    args = list(COMMANDS[command])
    if command == "restore":
        container = tmp_path / "c.h5"
        run_cli("pack", src, "-o", container)
        args.append(container)
    elif command == "average":
        args += [src, _copy_input(matrix_inputs[key], str(tmp_path / "twin"))]
    else:
        args.append(src)
    (first_code, first), (second_code, second) = _twice(args, tmp_path, "out.h5" if "pack" in command else "")
    assert first_code == second_code
    if first_code == 2:  # a refusal (e.g. quantize of a format it cannot write) is refused the same way
        assert first == second == {}
        return
    assert first_code == 0 and first
    assert first == second


@pytest.mark.parametrize("suffix", ["merged.keras", "merged.h5"])
def test_merge_writes_identical_bytes(matrix_inputs, tmp_path, suffix):  # noqa: F811
    keras_model = matrix_inputs["keras"]
    (a, first), (b, second) = _twice(["merge", keras_model, keras_model, "--weights", "0.6,0.4"], tmp_path, suffix)
    assert a == b == 0 and first == second


def test_merge_of_tf1_graphs_writes_identical_bytes(matrix_inputs, tmp_path):  # noqa: F811
    src = matrix_inputs["tf1"]
    (a, first), (b, second) = _twice(["merge", src, src, "--weights", "0.5,0.5"], tmp_path)
    assert a == b == 0 and first == second


@pytest.mark.parametrize("key", ["keras", "savedmodel_export", "tf1"])
def test_export_writes_identical_bytes(matrix_inputs, tmp_path, key):  # noqa: F811
    (a, first), (b, second) = _twice(["export", matrix_inputs[key], "--tflite"], tmp_path, "m.tflite")
    assert a == b == 0 and first == second


def _in_new_process(args, hash_seed):
    """The CLI in a fresh interpreter with its own string-hash seed (what differs between two runs)."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONHASHSEED=str(hash_seed))
    subprocess.run([sys.executable, "-c", "from wcompress.cli import main; main()", *map(str, args)], check=True,
                   env=env, capture_output=True)


def test_a_real_tf1_graph_is_rewritten_alike_in_two_processes(real, tmp_path):
    """musicnn's graph holds control-flow contexts whose maps TensorFlow orders by string hash, which
    Python seeds per process: two processes must still write the same .meta."""
    for seed in (1, 2):
        _in_new_process(["strip", real["musicnn"], "-o", str(tmp_path / f"run{seed}") + "/"], seed)
    first = _files(tmp_path / "run1")
    assert "model.ckpt.meta" in first and first == _files(tmp_path / "run2")


def test_sweep_rows_equal_with_jobs_1_and_2(real, tmp_path):
    """--jobs 2 evaluates in other processes: every row, packed bytes included, equals --jobs 1's."""
    import numpy as np
    from helpers import musicnn_feed, run_json

    data = tmp_path / "x.npz"
    np.savez(data, x=next(iter(musicnn_feed(4).values())))
    args = ["sweep", real["musicnn"], "--data", data, "--methods", "relative,flat", "--deltas",
            "relative=0.3,0.6,flat=0.02", "--bits", "32,16"]
    one = run_json(*args, "--jobs", "1")["rows"]
    assert run_json(*args, "--jobs", "2")["rows"] == one
    assert all(row["packed_bytes"] for row in one)
