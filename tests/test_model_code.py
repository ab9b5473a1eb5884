"""--model-code: weights-only files (Keras 2 weights .h5, Keras 3 .weights.h5, TF2 checkpoints) run in the
model a user's function builds; and the `corr` metric."""

import os
import shutil

import numpy as np
import pytest
from helpers import run_error, run_json

# mhcnuggets' architecture (its models.py; conftest.mhcnuggets_model), as a user's file would hold it.
CODE = '''import keras

MASK = -4200000.0


def build():
    return keras.Sequential([
        keras.Input((15, 21)), keras.layers.Masking(MASK), keras.layers.LSTM(64), keras.layers.Dense(64),
        keras.layers.Dropout(0.2), keras.layers.Activation("tanh"), keras.layers.Dense(1),
        keras.layers.Activation("sigmoid"),
    ])


def functional():
    """The same layers as a functional model: another object graph, the same variables."""
    inputs = keras.Input((15, 21))
    h = keras.layers.LSTM(64)(keras.layers.Masking(MASK)(inputs))
    h = keras.layers.Activation("tanh")(keras.layers.Dense(64)(h))
    return keras.Model(inputs, keras.layers.Activation("sigmoid")(keras.layers.Dense(1)(h)))


def narrow():
    return keras.Sequential([keras.Input((15, 21)), keras.layers.Masking(MASK), keras.layers.LSTM(32),
                             keras.layers.Dense(64), keras.layers.Dense(1)])


def no_head():
    return keras.Sequential([keras.Input((15, 21)), keras.layers.Masking(MASK), keras.layers.LSTM(64),
                             keras.layers.Dense(64)])


def no_recurrence():
    """Every kernel and bias of the right shape, but no LSTM: its recurrent kernel is left over."""
    inputs = keras.Input((15, 21))
    h = keras.layers.Lambda(lambda t: t[:, -1, :64])(keras.layers.Dense(256)(inputs))
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(64)(h)))


def nothing():
    return None


def needs_gpu():
    raise RuntimeError("no GPU here")


NOT_A_FUNCTION = 3
'''


@pytest.fixture(scope="module")
def code(tmp_path_factory):
    path = tmp_path_factory.mktemp("code") / "mhc_model.py"
    path.write_text(CODE)
    return str(path)


@pytest.fixture(scope="module")
def weights(mhc, tmp_path_factory):
    """The HLA-A02:01 model's weights in every weights-only kind, and its AUC evaluated from .keras."""
    import keras
    import tensorflow as tf

    root = tmp_path_factory.mktemp("weights")
    model = keras.models.load_model(mhc["ba"], compile=False)
    out = {"weights.h5": str(root / "ba.weights.h5")}
    model.save_weights(out["weights.h5"])
    # Keras 3 writes object checkpoints with tf.train.Checkpoint (save_counter, "ckpt-1" prefix).
    out["tf2"] = tf.train.Checkpoint(model=model).save(str(root / "tf2" / "ckpt"))
    out["keras2-ckpt"] = keras2_checkpoint(model, str(root / "keras2" / "x.ckpt"))
    out["auc"] = run_json("evaluate", mhc["ba"], "--data", mhc["data"], "--metric", "auc")["results"]
    return out


def keras2_checkpoint(model, prefix):
    """The object graph Keras 2's `model.save_weights('x.ckpt')` writes (checked against tf_keras 2.21 on
    this architecture): the model is the root; each layer is `layer-N`, one with weights also
    `layer_with_weights-N` (the same object); an LSTM's variables under `cell/`; optimizer state beside.
    No Keras 3 object has these names, so only matching the variables restores it."""
    import tensorflow as tf

    lstm, dense, head = [layer for layer in model.layers if layer.weights]

    def holder(layer, names):
        module = tf.Module()
        for variable, name in zip(layer.weights, names):
            setattr(module, name, tf.Variable(np.asarray(variable.numpy()) + 0))
        return module

    root = tf.Module()
    setattr(root, "layer-0", tf.Module())  # Masking
    cell = tf.Module()
    cell.cell = holder(lstm, ("kernel", "recurrent_kernel", "bias"))
    setattr(root, "layer_with_weights-0", cell)
    setattr(root, "layer-1", cell)
    setattr(root, "layer_with_weights-1", holder(dense, ("kernel", "bias")))
    setattr(root, "layer-2", getattr(root, "layer_with_weights-1"))
    setattr(root, "layer_with_weights-2", holder(head, ("kernel", "bias")))
    optimizer = tf.Module()
    optimizer.iter = tf.Variable(7, dtype=tf.int64)
    optimizer.kernel = tf.Variable(np.ones((64, 1), np.float32))  # a slot the shape of a model variable
    root.optimizer = optimizer
    return tf.train.Checkpoint(root).write(prefix)


def _evaluate(path, mhc, *extra):
    return run_json("evaluate", path, "--data", mhc["data"], "--metric", "auc", *extra)["results"]


def test_mhcnuggets_weights_only_h5_runs_in_the_model_of_its_code(real, mhc, code):
    results = _evaluate(real["mhcnuggets"], mhc, "--model-code", f"{code}:build")
    assert results == run_json("evaluate", mhc["ba"], "--data", mhc["data"], "--metric", "auc")["results"]
    assert 0.7 < results[0]["value"] < 1.0  # the real model separates binders from the rest
    line = run_error("evaluate", real["mhcnuggets"], "--data", mhc["data"], "--metric", "auc")
    assert "weights only" in line and "--model-code module:function" in line


def test_keras3_weights_h5_and_module_function_form(weights, mhc, code, monkeypatch):
    assert _evaluate(weights["weights.h5"], mhc, "--model-code", f"{code}:build") == weights["auc"]
    monkeypatch.syspath_prepend(os.path.dirname(code))
    assert _evaluate(weights["weights.h5"], mhc, "--model-code", "mhc_model:build") == weights["auc"]


def test_misnamed_weights_files_load_by_their_content(weights, real, mhc, code, tmp_path):
    """Keras's load_weights picks its reader by suffix: each file is given to it under the right one."""
    keras3_as_h5 = tmp_path / "keras3.h5"
    shutil.copy(weights["weights.h5"], keras3_as_h5)
    keras2_as_weights_h5 = tmp_path / "keras2.weights.h5"
    shutil.copy(real["mhcnuggets"], keras2_as_weights_h5)
    for path in (keras3_as_h5, keras2_as_weights_h5):
        assert _evaluate(path, mhc, "--model-code", f"{code}:build") == weights["auc"]


def test_tf2_checkpoints_keras3_and_keras2_layouts(weights, mhc, code):
    tf2 = weights["tf2"]
    for form in (tf2, tf2 + ".index", os.path.dirname(tf2)):
        assert _evaluate(form, mhc, "--model-code", f"{code}:build") == weights["auc"]
    # Another object graph for the same variables (functional, not Sequential): matched variable by variable.
    assert _evaluate(tf2, mhc, "--model-code", f"{code}:functional") == weights["auc"]
    assert _evaluate(weights["keras2-ckpt"], mhc, "--model-code", f"{code}:build") == weights["auc"]


def test_full_model_file_with_model_code_uses_the_function_model(mhc, code):
    assert _evaluate(mhc["ba"], mhc, "--model-code", f"{code}:build") == _evaluate(mhc["ba"], mhc)
    line = run_error("evaluate", mhc["ba"], "--data", mhc["data"], "--metric", "auc", "--model-code", f"{code}:narrow")
    assert "do not fit the model of --model-code" in line


def test_model_code_errors(real, weights, mhc, code, tmp_path):
    args = ("evaluate", real["mhcnuggets"], "--data", mhc["data"], "--metric", "auc", "--model-code")
    line = run_error(*args, f"{code}:missing")
    assert code in line and "defines no function 'missing'" in line
    assert "nothing() returned None, not a Keras model" in run_error(*args, f"{code}:nothing")
    assert "NOT_A_FUNCTION is not a function (a int)" in run_error(*args, f"{code}:NOT_A_FUNCTION")
    assert "needs_gpu() failed (RuntimeError: no GPU here)" in run_error(*args, f"{code}:needs_gpu")
    assert "name the function" in run_error(*args, code)
    assert "--model-code: no such Python file" in run_error(*args, tmp_path / "missing.py:build")
    assert "No module named" in run_error(*args, "no_such_module_here:build")

    line = run_error(*args, f"{code}:narrow")  # Keras 2 weights: Keras's own cause
    assert line.startswith(f"wcompress: error: {real['mhcnuggets']}: the weights do not fit")
    assert "Shape mismatch" in line and "(21, 128)" in line
    assert "Layer count mismatch" in run_error(*args, f"{code}:no_head")
    line = run_error("evaluate", weights["weights.h5"], *args[2:], f"{code}:narrow")  # Keras 3 weights
    assert "could not be loaded" in line and "value.shape=(21, 256)" in line and "Target variable" not in line
    for ckpt in (weights["tf2"], weights["keras2-ckpt"]):
        line = run_error("evaluate", ckpt, *args[2:], f"{code}:narrow")
        assert "has shape (21, 128)" in line and "(21, 256)" in line
        line = run_error("evaluate", ckpt, *args[2:], f"{code}:no_head")
        assert "the model has 2 variable(s) named 'kernel', the checkpoint 3" in line
        line = run_error("evaluate", ckpt, *args[2:], f"{code}:no_recurrence")
        assert "the checkpoint has 1 variable(s) the model lacks" in line and "cell/recurrent_kernel" in line


def test_tf1_checkpoint_without_graph_is_refused_with_the_cause(mhc, code, tmp_path):
    from conftest import build_tf1_checkpoint

    prefix = build_tf1_checkpoint(str(tmp_path / "tf1" / "model.ckpt"))
    os.remove(prefix + ".meta")
    line = run_error("evaluate", prefix, "--data", mhc["data"], "--metric", "auc", "--model-code", f"{code}:build")
    assert "names variables by graph scope" in line
    assert ".meta" in run_error("evaluate", prefix, "--data", mhc["data"], "--metric", "auc")


def test_in_memory_variants_of_a_model_code_model(real, mhc, code):
    """sweep assigns variants to the function's model in memory, as it does to a loaded .keras."""
    args = ("--data", mhc["data"], "--metric", "auc", "--methods", "flat", "--deltas", "0,0.05")
    rows = run_json("sweep", real["mhcnuggets"], "--model-code", f"{code}:build", *args)["rows"]
    assert [r["value"] for r in rows] == [r["value"] for r in run_json("sweep", mhc["ba"], *args)["rows"]]


# --- corr -------------------------------------------------------------------------------------------

def pearson_by_hand(a, b):
    """The definition: sum of products of deviations over the root of the sums of squared deviations."""
    a = [float(v) for v in np.ravel(a)]
    b = [float(v) for v in np.ravel(b)]
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    cross = sum((x - mean_a) * (y - mean_b) for x, y in zip(a, b))
    sa = sum((x - mean_a) ** 2 for x in a) ** 0.5
    sb = sum((y - mean_b) ** 2 for y in b) ** 0.5
    return cross / (sa * sb)


def test_corr_against_the_definition():
    from wcompress.workflows.metrics import get_metric

    corr = get_metric("corr")
    assert corr.needs == "reference" and corr.higher_is_better
    rng = np.random.RandomState(3)
    reference = rng.rand(50, 4).astype(np.float32)
    for pred in (reference + rng.normal(0, 0.1, reference.shape).astype(np.float32), -reference,
                 rng.rand(50, 4).astype(np.float32), 3 * reference + 7):
        assert corr.fn(reference, pred) == pytest.approx(pearson_by_hand(reference, pred), abs=1e-12)
    assert corr.fn(reference, 3 * reference + 7) == pytest.approx(1.0, abs=1e-12)
    assert corr.fn(reference, -reference) == pytest.approx(-1.0, abs=1e-12)
    # Not cosine: a shared offset does not make unrelated outputs agree.
    noise = rng.rand(50, 4).astype(np.float32)
    assert get_metric("cosine").fn(reference + 100, noise + 100) > 0.99
    assert abs(corr.fn(reference + 100, noise + 100)) < 0.3


def test_corr_of_constant_outputs():
    from wcompress.workflows.metrics import pearson

    tenth = np.full((7, 3), 0.1, np.float32)  # its float64 mean rounds off 0.1: constant all the same
    assert pearson(tenth, tenth.copy()) == 1.0
    assert pearson(tenth, np.full((7, 3), 0.2, np.float32)) == 0.0
    varying = np.arange(21, dtype=np.float32).reshape(7, 3)
    assert pearson(tenth, varying) == 0.0 and pearson(varying, tenth) == 0.0
    assert pearson(np.zeros(1), np.zeros(1)) == 1.0


def test_corr_on_the_cli_against_numpy(mhc):
    import keras

    data = np.load(mhc["data"])["x"]
    by_keras = [keras.models.load_model(p, compile=False).predict(data, verbose=0) for p in (mhc["ba"], mhc["hlap"])]
    result = run_json("evaluate", mhc["hlap"], "--reference", mhc["ba"], "--data", mhc["data"], "--metric", "corr")
    (row,) = result["results"]
    assert row["metric"] == "corr"
    assert row["value"] == pytest.approx(pearson_by_hand(*by_keras), abs=1e-5)
    assert 0.5 < row["value"] < 1.0
    itself = run_json("evaluate", mhc["ba"], "--reference", mhc["ba"], "--data", mhc["data"], "--metric", "corr")
    assert itself["results"][0]["value"] == pytest.approx(1.0, abs=1e-12)
