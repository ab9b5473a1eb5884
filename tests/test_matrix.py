"""Every input format × every command that writes × every output form a user can type.

Each cell either exits 0 with an output that stock TensorFlow/Keras loads and runs with the expected
values, or exits 2 with one line and writes nothing. Outputs are read here with stock loaders only.
"""

import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import build_tiny_keras, mhcnuggets_encode, mhcnuggets_model
from helpers import stock_tensors, tf1_predict

from wcompress.cli import cli

# input -> (how stock TF runs it, which architecture a weights-only file needs)
INPUTS = {
    "tf1": "tf1", "tf1_resource": "tf1", "tf2": "tf2", "savedmodel_tf1": "savedmodel",
    "savedmodel_module": "savedmodel", "savedmodel_export": "savedmodel", "keras": "keras", "legacy_h5": "keras",
    "weights_h5": "weights", "legacy_weights": "weights",
}
COMMANDS = {
    "strip": ["strip"],
    # --min-size 0: every kernel is sparsified, as the check of the outputs below expects.
    "sparsify": ["sparsify", "--method", "relative", "--delta", "0.5", "--min-size", "0"],
    "fp16": ["fp16"],
    "restore": ["restore"],  # of a container packed from the input
    "average": ["average"],  # of the input and a copy of it
}
FORMS = ["out.keras", "out.h5", "out.weights.h5", "out.ckpt", "out", "dir/", "default"]
KERAS_SUFFIX = {"out.keras": "keras", "out.h5": "h5", "out.weights.h5": "weights"}


@pytest.fixture(scope="session")
def matrix_inputs(tiny, real, tmp_path_factory):
    import keras

    root = tmp_path_factory.mktemp("matrix")
    paths = {k: tiny[k] for k in INPUTS if k in tiny}
    legacy = str(root / "tiny.h5")
    keras.models.load_model(tiny["keras"], compile=False).save(legacy)  # Keras 3 writes legacy HDF5 for .h5
    paths["legacy_h5"] = legacy
    paths["legacy_weights"] = real["mhcnuggets"]
    return paths


def _copy_input(src, folder):
    """A private copy of an input model (default outputs are written beside it)."""
    os.makedirs(folder)
    if os.path.isdir(src):
        dest = os.path.join(folder, os.path.basename(os.path.normpath(src)))
        shutil.copytree(src, dest)
        return dest
    base = os.path.basename(src)
    own = [f for f in os.listdir(os.path.dirname(src)) if f == base or f.startswith(base + ".")]
    if not own:  # a checkpoint prefix: its .index/.data/.meta files
        raise AssertionError(src)
    for f in own:
        shutil.copy2(os.path.join(os.path.dirname(src), f), folder)
    return os.path.join(folder, base)


def _x(key):
    if key == "legacy_weights":
        return mhcnuggets_encode(["SLLMWITQC", "KVAELVHFL", "GILGFVFTL", "AAAAAAAAA"])
    width = 10 if key.startswith("tf1") else 12
    return np.random.RandomState(7).rand(5, width).astype("float32")


def stock_predict(kind, key, path, x):
    """Run a model file with stock TensorFlow/Keras only; an output must load this way."""
    import keras
    import tensorflow as tf

    if kind == "tf1":
        return tf1_predict(path + ".meta", path, {"input:0": x}, "output:0")
    if kind == "tf2":
        model = build_tiny_keras()
        tf.train.Checkpoint(model=model).restore(path).expect_partial().assert_nontrivial_match()
        return model(x).numpy()
    if kind == "savedmodel":
        signature = tf.saved_model.load(path).signatures["serving_default"]
        (name,) = signature.structured_input_signature[1]
        return next(iter(signature(**{name: tf.constant(x)}).values())).numpy()
    if kind == "weights":
        model = mhcnuggets_model() if key == "legacy_weights" else build_tiny_keras()
        model.load_weights(path)
        return model.predict(x, verbose=0)
    return keras.models.load_model(path, compile=False).predict(x, verbose=0)


def _output_kind(key, form):
    """How stock TF must load the output of `key` written to `form`."""
    if form in KERAS_SUFFIX and INPUTS[key] == "keras":
        return "weights" if KERAS_SUFFIX[form] == "weights" else "keras"
    return INPUTS[key]


def _expected_refusal(key, command, form):
    """The cells that must be refused: a suffix that the input's information cannot fill."""
    kind = INPUTS[key]
    if command == "fp16" and key == "tf2":
        return True  # a float32 model cannot restore float16 from a TF2 checkpoint: refused, pack suggested
    if form in KERAS_SUFFIX:
        if kind not in ("keras", "weights"):
            return True  # checkpoints and SavedModels are not Keras files
        if key == "weights_h5":
            return form != "out.weights.h5"  # weights only: no model to write as .keras / .h5
        if key == "legacy_weights":
            return form != "out.h5"  # legacy layout: only as .h5
        return False
    return kind in ("keras", "weights") and form in ("out.ckpt", "out")  # Keras loads only Keras suffixes


def _single_output(folder, before):
    """The one new thing a command wrote into `folder` (a file, a prefix or a folder)."""
    new = sorted(set(os.listdir(folder)) - before)
    if any(n.endswith(".index") for n in new):
        (index,) = [n for n in new if n.endswith(".index")]
        return os.path.join(folder, index[: -len(".index")])
    (name,) = [n for n in new if n != "checkpoint"]
    return os.path.join(folder, name)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("key", list(INPUTS))
def test_output_loads_in_stock_tf_or_is_refused(matrix_inputs, tmp_path, key, command, form):
    src = _copy_input(matrix_inputs[key], str(tmp_path / "in"))
    x = _x(key)
    reference = stock_predict(INPUTS[key], key, src, x)
    args = list(COMMANDS[command])
    if command == "restore":
        container = str(tmp_path / "packed.h5")
        _run(["pack", src, "-o", container], 0)
        args.append(container)
    elif command == "average":
        twin = _copy_input(matrix_inputs[key], str(tmp_path / "twin"))
        args += [src, twin]
    else:
        args.append(src)

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("the user's file")
    watched = {"in": str(tmp_path / "in"), "out": str(out_dir)}
    if command == "restore":
        watched["in"] = str(tmp_path)  # default outputs go beside the container
    elif command == "average":
        watched["in"] = str(tmp_path / "twin")  # ... and beside the last checkpoint averaged
    before = {name: set(os.listdir(path)) for name, path in watched.items()}
    if form == "default":
        where = watched["in"]
    elif form == "dir/":
        args += ["-o", str(out_dir) + "/"]
        where = watched["out"]
    else:
        args += ["-o", str(out_dir / form)]
        where = watched["out"]

    result = _run(args, None)
    if _expected_refusal(key, command, form):
        assert result.exit_code == 2, (result.output, result.stderr)
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("wcompress: error: "), result.stderr
        assert {name: set(os.listdir(path)) for name, path in watched.items()} == before, "a refusal wrote something"
        assert _expected_refusal(key, command, form), lines[0]
        return
    assert result.exit_code == 0, (result.output, result.stderr)
    assert (out_dir / "keep.txt").read_text() == "the user's file"
    output = _single_output(where, before["in" if form == "default" else "out"])
    predicted = stock_predict(_output_kind(key, form), key, output, x)
    assert predicted.shape == reference.shape and np.all(np.isfinite(predicted))
    if command == "sparsify":
        # TF2 checkpoints may store the model's own variables under optimizer/_trainable_variables.
        slots = ("optimizer/_variables", "Adam", "OPTIMIZER_SLOT", "optimizer/vars")
        kernels = [v for k, v in stock_tensors(output).items() if v.ndim == 2 and v.size >= 64
                   and not any(s in k for s in slots)]
        assert kernels and all(np.mean(k == 0) >= 0.45 for k in kernels)
    elif command == "fp16":
        np.testing.assert_allclose(predicted, reference, rtol=2e-2, atol=2e-2)
    else:
        np.testing.assert_allclose(predicted, reference, rtol=1e-6, atol=1e-6)


def _run(args, exit_code):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if exit_code is not None:
        assert result.exit_code == exit_code, (result.output, result.stderr)
    assert "Traceback" not in result.output
    return result
