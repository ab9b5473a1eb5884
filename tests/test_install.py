"""The install respects the user's environment: `pip install wcompress` pulls no TensorFlow, adds nothing
to an environment that already has one, and without TensorFlow the Keras-file and container commands work
while the others say in one line what to install."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

PIP_QUIET = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def source_copy(folder):
    """The package's sources, copied so that building them writes nothing into the repository."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), folder / name)
    for name in ("wcompress", "plugins"):
        shutil.copytree(os.path.join(REPO, name), folder / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return str(folder)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return source_copy(tmp_path_factory.mktemp("source"))


@pytest.fixture(scope="module")
def bare(tmp_path_factory, source):
    """A fresh virtual environment with `pip install wcompress` and nothing else."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", source], check=True, env=PIP_QUIET,
                   capture_output=True)
    return venv


def run(venv, *args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(venv / "bin" / "wcompress"), *args], capture_output=True, text=True, cwd=cwd,
                          env=env)


def test_the_base_install_pulls_no_tensorflow_nor_keras(bare):
    listed = subprocess.run([str(bare / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, check=True, env=PIP_QUIET)
    names = {item["name"].lower().replace("_", "-") for item in json.loads(listed.stdout)}
    assert "wcompress" in names
    assert not {name for name in names if name.startswith(("tensorflow", "keras", "tf-", "jax", "torch"))}


def test_without_tensorflow_keras_files_and_containers_work(bare, tiny, tmp_path):
    keras_file = tiny["keras"]
    steps = [
        ["--help"],
        ["plugins"],
        ["profile", keras_file],
        ["strip", keras_file, "-o", "stripped.keras"],
        ["sparsify", keras_file, "--method", "relative", "--delta", "0.5", "-o", "sparse.keras"],
        ["sparsify", keras_file, "--method", "relative", "--delta", "0.5", "--pack", "-o", "sparse.h5"],
        ["pack", keras_file, "-o", "packed.h5"],
        ["restore", "packed.h5", "-o", "restored.keras"],
        ["report", "sparse.h5", "--against", keras_file],
        ["fp16", keras_file, "-o", "half.keras"],
        ["profile", tiny["weights_h5"]],
    ]
    for args in steps:
        done = run(bare, *args, cwd=tmp_path)
        assert done.returncode == 0, (args, done.stderr)
    assert sorted(os.listdir(tmp_path)) == ["half.keras", "packed.h5", "restored.keras", "sparse.h5",
                                            "sparse.keras", "stripped.keras"]


def test_without_tensorflow_a_checkpoint_gets_one_line_saying_what_to_install(bare, tiny, tmp_path):
    for args in (["profile", tiny["tf1"]], ["evaluate", tiny["keras"], "--reference", tiny["keras"],
                                            "--metric", "fidelity", "--data", "x.npy"]):
        if args[0] == "evaluate":
            import numpy as np

            np.save(tmp_path / "x.npy", tiny["x"])
        done = run(bare, *args, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr
        assert lines[0].startswith(f"wcompress: error: {args[1]}: this needs TensorFlow")
        assert "pip install 'wcompress[tensorflow]'" in lines[0]


def test_installing_beside_an_existing_tensorflow_adds_no_second_one(source):
    """pip's own resolver, asked what installing wcompress here would do (this environment has the
    tests' TensorFlow): no distribution of TensorFlow is added or replaced."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
                           source], capture_output=True, text=True, check=True, env=PIP_QUIET)
    installs = {item["metadata"]["name"].lower() for item in json.loads(done.stdout)["install"]}
    assert installs == {"wcompress"}
