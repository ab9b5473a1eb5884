"""The output policy: where outputs go, what --force may replace, and that nothing survives a failed
or interrupted write (docs/design.md, "Writing safely")."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import digest, run_cli, run_error, stock_tensors

from wcompress.cli import cli


def _listing(folder):
    return sorted(os.path.relpath(os.path.join(r, n), folder) for r, ds, ns in os.walk(folder) for n in ns + ds)


def test_output_dir_means_inside_it_for_keras_inputs(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli("strip", tiny["keras"], "-o", "newdir/")
    assert _listing(tmp_path) == ["newdir", "newdir/tiny.keras"]
    import keras

    keras.models.load_model(tmp_path / "newdir" / "tiny.keras", compile=False)


def test_force_into_an_existing_folder_keeps_every_other_file(tiny, tmp_path):
    precious = tmp_path / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "notes.txt").write_text("mine")
    (precious / "sub" / "data.bin").write_bytes(b"\0" * 10)
    for target in (precious, str(precious) + "/"):
        run_cli("strip", tiny["keras"], "-o", target, "--force")
        run_cli("strip", tiny["tf1"], "-o", target, "--force")
    assert _listing(precious) == ["checkpoint", "model.ckpt.data-00000-of-00001", "model.ckpt.index",
                                  "model.ckpt.meta", "notes.txt", "sub", "sub/data.bin", "tiny.keras"]
    assert (precious / "notes.txt").read_text() == "mine"


def test_a_folder_is_never_replaced(tiny, tmp_path):
    (tmp_path / "out.keras").mkdir()
    (tmp_path / "out.keras" / "x").write_text("mine")
    run_cli("strip", tiny["keras"], "-o", tmp_path / "out.keras", "--force")  # a folder: written inside
    assert _listing(tmp_path / "out.keras") == ["tiny.keras", "x"]
    user_folder = tmp_path / "sm"
    user_folder.mkdir()
    (user_folder / "saved_model.pb").write_bytes(b"not ours")
    (user_folder / "thesis.tex").write_text("mine")
    run_cli("strip", tiny["savedmodel_tf1"], "-o", user_folder, "--force")  # holds more than a SavedModel
    assert _listing(user_folder) == sorted(["saved_model.pb", "thesis.tex", "savedmodel_tf1"]
                                           + [os.path.join("savedmodel_tf1", f) for f in _listing(tiny["savedmodel_tf1"])])
    assert (user_folder / "thesis.tex").read_text() == "mine"


def test_savedmodel_output_replaces_only_a_savedmodel_folder(tiny, tmp_path):
    out = tmp_path / "sm"
    run_cli("strip", tiny["savedmodel_tf1"], "-o", out)
    assert "--force" in run_error("strip", tiny["savedmodel_tf1"], "-o", out)
    first = digest(out)
    run_cli("fp16", tiny["savedmodel_tf1"], "-o", out, "--force")
    assert digest(out) != first and os.path.isfile(out / "saved_model.pb")


@pytest.fixture(scope="module")
def musicnn_copy(real, tmp_path_factory):
    """musicnn's layout: a folder holding one checkpoint with an empty prefix (`.index`)."""
    folder = tmp_path_factory.mktemp("m") / "MTT_musicnn"
    shutil.copytree(real["musicnn"], folder)
    return folder


def test_default_names_follow_one_rule(tiny, musicnn_copy, tmp_path):
    """NAME.EXT -> NAME.TAG.EXT beside the input; a model that is a folder -> FOLDER-TAG/ beside it."""
    keras_in = tmp_path / "k" / "tiny.keras"
    keras_in.parent.mkdir()
    shutil.copy(tiny["keras"], keras_in)
    run_cli("strip", keras_in)
    run_cli("sparsify", keras_in, "--method", "relative", "--delta", "0.5")
    run_cli("sparsify", keras_in, "--method", "relative", "--delta", "0.5", "--pack")
    run_cli("pack", keras_in)
    run_cli("fp16", keras_in)
    run_cli("restore", tmp_path / "k" / "tiny.packed.h5")
    assert _listing(keras_in.parent) == ["tiny.fp16.keras", "tiny.keras", "tiny.packed.h5", "tiny.restored.keras",
                                         "tiny.sparse.h5", "tiny.sparse.keras", "tiny.stripped.keras"]

    ckpt = tmp_path / "c"
    shutil.copytree(os.path.dirname(tiny["tf1"]), ckpt)
    state = (ckpt / "checkpoint").read_text()
    run_cli("strip", ckpt / "model.ckpt")
    assert (ckpt / "checkpoint").read_text() == state  # never rewritten, never added
    assert os.path.exists(ckpt / "model.stripped.ckpt.index")

    before = _listing(musicnn_copy.parent)
    run_cli("strip", musicnn_copy)
    new = sorted(set(_listing(musicnn_copy.parent)) - set(before))
    assert new == ["MTT_musicnn-stripped", "MTT_musicnn-stripped/checkpoint",
                   "MTT_musicnn-stripped/model.ckpt.data-00000-of-00001", "MTT_musicnn-stripped/model.ckpt.index",
                   "MTT_musicnn-stripped/model.ckpt.meta"]


def test_output_into_the_input_checkpoint_folder_is_refused(musicnn_copy):
    before = digest(musicnn_copy)
    listing = _listing(musicnn_copy)
    assert "own folder" in run_error("strip", musicnn_copy, "-o", musicnn_copy, "--force")
    assert "own folder" in run_error("strip", musicnn_copy, "-o", str(musicnn_copy) + "/", "--force")
    assert digest(musicnn_copy) == before and _listing(musicnn_copy) == listing


def test_average_refuses_a_folder_of_mixed_series(tiny, tmp_path):
    import keras

    train = tmp_path / "train"
    train.mkdir()
    model = keras.models.load_model(tiny["keras"], compile=False)
    for step in (1, 2):
        model.save_weights(train / f"w-{step}.weights.h5")
        model.save(train / f"m-{step}.keras")
    line = run_error("average", "--dir", train, "-o", tmp_path / "avg.weights.h5")
    assert "several checkpoint series" in line and "m-N.keras" in line and "w-N.weights.h5" in line
    assert not os.path.exists(tmp_path / "avg.weights.h5")


def test_hdf5_named_keras_warns_and_converts(real, tmp_path):
    import keras

    misnamed = tmp_path / "fer.keras"
    shutil.copy(real["fer"], misnamed)
    result = run_cli("strip", misnamed, "-o", tmp_path / "out.keras")
    assert "is an HDF5 file although named .keras" in result.stderr
    model = keras.models.load_model(tmp_path / "out.keras", compile=False)
    assert model.count_params() == 58423


def test_suffix_refusals_name_the_suffix_to_use(tiny, tmp_path):
    assert "name the output .weights.h5" in run_error("strip", tiny["weights_h5"], "-o", tmp_path / "x.keras")
    assert "choose a path without that suffix" in run_error("strip", tiny["tf1"], "-o", tmp_path / "x.keras")
    assert "name the output .keras" in run_error("strip", tiny["keras"], "-o", tmp_path / "x.bin")
    assert "name it .h5" in run_error("pack", tiny["keras"], "-o", tmp_path / "x.keras")
    assert os.listdir(tmp_path) == []


def test_destructive_thresholds_warn(tiny, tmp_path):
    result = run_cli("sparsify", tiny["tf1"], "--method", "relative", "--delta", "1.0", "-o", tmp_path / "s.ckpt")
    assert result.stderr.startswith("wcompress: warning: the model is now 92.9% zeros; fc1/kernel is now 100.0% zeros")
    result = run_cli("sparsify", tiny["tf1"], "--method", "relative", "--delta", "1.0", "--dry-run", "--json")
    assert json.loads(result.stdout)["warnings"][:2] == ["the model is now 92.9% zeros",
                                                         "fc1/kernel is now 100.0% zeros"]
    assert result.stderr.rstrip().endswith("these thresholds are probably on the wrong scale")
    quiet = run_cli("sparsify", tiny["tf1"], "--method", "relative", "--delta", "0.5", "-o", tmp_path / "h.ckpt")
    assert "warning" not in quiet.stderr
    # A Keras file names variables by position: the warning names them by layer, as summaries do.
    result = run_cli("sparsify", tiny["keras"], "--method", "relative", "--delta", "1.0", "-o", tmp_path / "s.keras")
    assert "hidden kernel (layers/dense/vars/0) is now 100.0% zeros" in result.stderr
    assert result.stderr.rstrip().endswith("check the thresholds with --dry-run")


@pytest.fixture(scope="module")
def big_keras(tmp_path_factory):
    """A 72 MB .keras file: its write lasts long enough to be interrupted."""
    import keras

    path = tmp_path_factory.mktemp("big") / "big.keras"
    inputs = keras.Input((3000,))
    h = keras.layers.Dense(3000, name="a")(inputs)
    keras.Model(inputs, keras.layers.Dense(3000, name="b")(h)).save(path)
    return path


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_interrupted_write_leaves_nothing(big_keras, tmp_path, signum):
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    os.makedirs(env["TMPDIR"])
    out = tmp_path / "newparent" / "deep" / "x.keras"
    # Ctrl-C as at a terminal: a shell without job control starts background jobs with SIGINT ignored, which
    # Python (rightly) keeps, so the child gets the default disposition back before it starts.
    proc = subprocess.Popen([sys.executable, "-m", "wcompress.cli", "strip", str(big_keras), "-o", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    staging = tmp_path / "newparent" / "deep"
    while time.time() < deadline and not (staging.exists() and any(n.startswith(".wcompress-") for n in os.listdir(staging))):
        time.sleep(0.02)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, err
    assert b"Traceback" not in err
    assert not os.path.exists(tmp_path / "newparent"), _listing(tmp_path)
    assert os.listdir(env["TMPDIR"]) == []
