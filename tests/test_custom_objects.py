"""--custom-objects: Keras models that need the user's code (a custom activation, a Keras 2 '<lambda>')."""

import json
import os
import shutil

import numpy as np
import pytest
from helpers import run_cli, run_error, run_json

ACTIVATIONS = '''import keras


def scaled_tanh(x):
    return 2.0 * keras.ops.tanh(x)
'''


def scaled_tanh(x):
    import keras

    return 2.0 * keras.ops.tanh(x)


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    """A model with a custom activation as .keras, the same as Keras 2 wrote a lambda activation into
    .h5 ('activation': '<lambda>'), the files that supply the function, and data with its outputs."""
    import h5py
    import keras

    root = tmp_path_factory.mktemp("custom")
    keras.utils.set_random_seed(5)
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(4, activation=scaled_tanh)(inputs)))
    paths = {"keras": str(root / "act.keras"), "keras2": str(root / "keras2_lambda.h5")}
    model.save(paths["keras"])
    model.save(paths["keras2"])
    with h5py.File(paths["keras2"], "r+") as h5:
        config = json.loads(h5.attrs["model_config"])
        (dense,) = [layer for layer in config["config"]["layers"] if layer["config"].get("activation")
                    not in (None, "linear")]
        dense["config"]["activation"] = "<lambda>"
        h5.attrs["model_config"] = json.dumps(config)
    (root / "acts.py").write_text(ACTIVATIONS)
    (root / "lambda_objects.py").write_text(ACTIVATIONS + "\ncustom_objects = {'<lambda>': scaled_tanh}\n")
    paths["acts"], paths["lambda_objects"] = str(root / "acts.py"), str(root / "lambda_objects.py")
    x = np.random.RandomState(0).rand(5, 6).astype("float32")
    predictions = model.predict(x, verbose=0)
    paths["data"] = str(root / "data.npz")
    np.savez(paths["data"], x=x, y=np.zeros_like(predictions))
    paths["mse"] = float(np.mean(predictions.astype(np.float64) ** 2))
    paths["predictions"], paths["x"], paths["root"] = predictions, x, root
    return paths


def test_custom_activation_error_names_it_and_custom_objects_loads_it(custom, monkeypatch):
    line = run_error("evaluate", custom["keras"], "--data", custom["data"], "--metric", "mse")
    assert "Could not locate function 'scaled_tanh'" in line and "--custom-objects" in line
    assert "config=" not in line and len(_cause(line)) < 150
    for spec in (custom["acts"], "acts", "acts:scaled_tanh"):
        monkeypatch.syspath_prepend(str(custom["root"]))
        value = run_json("evaluate", custom["keras"], "--data", custom["data"], "--metric", "mse",
                         "--custom-objects", spec)["results"][0]["value"]
        assert value == pytest.approx(custom["mse"], rel=1e-5), spec


def test_keras2_lambda_activation_gives_keras_cause_in_one_line(custom):
    """Before: a 519-character dump of the layer config, cut before the cause."""
    line = run_error("evaluate", custom["keras2"], "--data", custom["data"], "--metric", "mse")
    assert "Could not interpret activation function identifier: <lambda>" in line
    assert "custom_objects = {'<lambda>'" in line and "config=" not in line and len(_cause(line)) < 180
    value = run_json("evaluate", custom["keras2"], "--data", custom["data"], "--metric", "mse",
                     "--custom-objects", custom["lambda_objects"])["results"][0]["value"]
    assert value == pytest.approx(custom["mse"], rel=1e-5)


def test_merge_with_custom_objects(custom, tmp_path):
    """Members that need custom objects merge with them; the output (converted to .h5, which loads the
    model again) runs in stock Keras given the same function; without them, nothing is written."""
    import keras

    out = tmp_path / "merged.h5"
    assert "--custom-objects" in run_error("merge", custom["keras2"], custom["keras"], "-o", out)
    assert not os.path.exists(out)
    run_cli("merge", custom["keras2"], custom["keras"], "--weights", "0.3,0.7", "--custom-objects",
            custom["lambda_objects"], "-o", out)
    merged = keras.models.load_model(out, compile=False, custom_objects={"scaled_tanh": scaled_tanh})
    np.testing.assert_allclose(merged.predict(custom["x"], verbose=0), custom["predictions"], atol=1e-5)


def test_sweep_takes_custom_objects(custom):
    result = run_json("sweep", custom["keras"], "--data", custom["data"], "--metric", "mse", "--methods",
                      "relative", "--deltas", "0.5", "--custom-objects", custom["acts"])
    assert result["baseline"] == pytest.approx(custom["mse"], rel=1e-5) and len(result["rows"]) == 1


def test_custom_objects_errors(custom, tmp_path):
    empty = tmp_path / "empty.py"
    empty.write_text("LIMIT = 3\n")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('needs a GPU')\n")
    args = ("evaluate", custom["keras"], "--data", custom["data"], "--metric", "mse", "--custom-objects")
    assert "no such Python file" in run_error(*args, tmp_path / "missing.py")
    assert "defines no public function or class" in run_error(*args, empty)
    assert "cannot import it (RuntimeError: needs a GPU)" in run_error(*args, broken)
    assert "no attribute 'nothing'" in run_error(*args, "json:nothing")
    assert "No module named" in run_error(*args, "no_such_module_here")


def test_ensemble_merge_command_carries_custom_objects():
    from wcompress.workflows import EvalSpec, merge_command

    spec = EvalSpec(data="d.npz", metric="mse", custom_objects="my acts.py", unsafe=True)
    command = merge_command({"members": ["a.keras", "b.keras"], "weights": [0.5, 0.5]}, "float32", spec,
                            "ensemble.keras")
    assert command == ("wcompress merge a.keras b.keras --weights 0.5,0.5 --custom-objects 'my acts.py' --unsafe "
                       "-o ensemble.keras")


def test_keras_cause_of_an_unknown_layer(custom, tmp_path):
    """Keras's missing-object message for a custom layer class, cut before its advice."""
    import h5py

    path = tmp_path / "unknown_layer.h5"
    shutil.copy(custom["keras2"], path)
    with h5py.File(path, "r+") as h5:
        config = json.loads(h5.attrs["model_config"])
        (layer,) = [layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense"
                    and layer["config"]["activation"] == "<lambda>"]
        layer["class_name"] = "GatedDense"
        h5.attrs["model_config"] = json.dumps(config)
    line = run_error("evaluate", path, "--data", custom["data"], "--metric", "mse")
    assert "GatedDense" in line and "--custom-objects" in line and len(_cause(line)) < 150


def _cause(line):
    """The message after the path, whose length depends on the temp folder."""
    return line.partition("Keras cannot load this model: ")[2]
