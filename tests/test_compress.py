"""compress: the smallest file within a budget judged on examples the search never saw, or nothing.

On mhcnuggets (a real LSTM model) with its own labelled peptides: the written container meets the AUC
budget on the held-out part, recomputed here from the definition of AUC on the file restored by the stock
loader; too few examples to hold out is refused and writes nothing; --time-limit ends the search early
and still writes a file within the budget."""

import json
import os

import numpy as np
import pytest
from helpers import run_error, run_json

import wcompress
from wcompress.workflows.scoring import split_examples


def _auc(scores, labels):
    """P(a binder scores above a non-binder), ties counted half."""
    pairs = scores[labels == 1][:, None] - scores[labels == 0][None, :]
    return np.mean(pairs > 0) + 0.5 * np.mean(pairs == 0)


@pytest.fixture(scope="module")
def compressed(mhc, tmp_path_factory):
    out = tmp_path_factory.mktemp("compress") / "mhc.h5"
    result = run_json("compress", mhc["ba"], "--data", mhc["data"], "--metric", "auc", "--max-drop", "0.05",
                      "--max-evals", "60", "-o", out)
    return result, out


def test_compress_writes_a_container_within_the_budget_on_held_out_examples(compressed, mhc, tmp_path):
    result, out = compressed
    assert result["verified"] and result["output_kind"] == "container"
    assert result["examples"] == "tuned on 420 examples, judged on 180 held out"
    assert result["output_bytes"] == os.path.getsize(out)
    compare = result["compare"]
    assert result["output_bytes"] < compare["int8_container_bytes"] < compare["float16_container_bytes"] \
        < compare["dense_bytes"]
    # The held-out figure, recomputed from the file: restored by us, loaded by stock Keras.
    import keras

    back = wcompress.restore(out, output=tmp_path / "back.keras").output
    with np.load(mhc["data"]) as data:
        x, y = data["x"], data["y"]
    _, held = split_examples(len(x), 0.3)
    model, dense = keras.models.load_model(back, compile=False), keras.models.load_model(mhc["ba"], compile=False)
    ours = _auc(model.predict(x[held], verbose=0).ravel(), y[held])
    assert ours == pytest.approx(result["tuned"]["held_out_value"], abs=1e-6)
    assert ours >= 0.95 * _auc(dense.predict(x[held], verbose=0).ravel(), y[held])
    assert json.load(open(result["plan"]))


def test_too_few_examples_are_refused_and_nothing_is_written(mhc, tmp_path):
    with np.load(mhc["data"]) as data:
        few = tmp_path / "few.npz"
        np.savez(few, x=data["x"][:20], y=data["y"][:20])
    out = tmp_path / "out.h5"
    message = run_error("compress", mhc["ba"], "--data", few, "--metric", "auc", "--max-drop", "0.05", "-o", out)
    assert "20 examples are too few" in message and "--validation" in message and "--no-holdout" in message
    assert sorted(os.listdir(tmp_path)) == ["few.npz"]


def test_no_holdout_is_labelled_unverified(mhc, tmp_path):
    with np.load(mhc["data"]) as data:
        x = data["x"][:30]
    result = wcompress.compress(mhc["ba"], x, 0.05, no_holdout=True, max_evals=8, output=tmp_path / "c.h5")
    document = result.to_dict()
    assert document["verified"] is False and "unverified" in document["examples"]
    assert document["output_bytes"] == os.path.getsize(tmp_path / "c.h5")


def test_a_time_limit_ends_the_search_with_a_file_within_the_budget(mhc, tmp_path):
    import keras

    model = keras.models.load_model(mhc["ba"], compile=False)
    with np.load(mhc["data"]) as data:
        x, y = data["x"], data["y"]
    result = wcompress.compress(model, (x, y), 0.05, metric="auc", time_limit="5s")
    document = result.to_dict()
    assert document["search_stopped_by"] == "time limit" and document["tuned"]["within_budget"]
    assert document["output"] is None and document["output_bytes"] < document["compare"]["dense_bytes"]


def test_autotune_target_bytes_needs_the_container(mhc, tmp_path):
    message = run_error("autotune", mhc["ba"], "--data", mhc["data"], "--metric", "auc", "--max-drop", "0.05",
                        "--target", "bytes", "-o", tmp_path / "out.keras")
    assert "--target bytes minimises the container's bytes: add --pack" in message
    assert os.listdir(tmp_path) == []


def test_no_state_within_the_budget_writes_nothing_unless_best_effort(mhc, tmp_path):
    with np.load(mhc["data"]) as data:
        x = data["x"][:60]
    out = tmp_path / "c.h5"
    # The largest difference from the model itself is 0 dense, and a relative budget of 0 allows none: every
    # compressed state fails it.
    with pytest.raises(wcompress.WcompressError, match="--best-effort"):
        wcompress.compress(mhc["ba"], x, 0.05, metric="maxdiff", max_evals=6, output=out)
    assert os.listdir(tmp_path) == []
    with pytest.warns(wcompress.WcompressWarning, match="no state meets the budget"):
        result = wcompress.compress(mhc["ba"], x, 0.05, metric="maxdiff", max_evals=6, output=out,
                                    best_effort=True)
    document = result.to_dict()
    tuned = document["tuned"]
    assert not tuned["within_budget"] and tuned["held_out_value"] > document["held_out_baseline"] == 0
    assert document["output_bytes"] == os.path.getsize(out) < document["compare"]["dense_bytes"]


def test_a_negative_budget_is_refused(mhc, tmp_path):
    message = run_error("compress", mhc["ba"], "--data", mhc["data"], "--metric", "auc", "--max-drop", "-0.1",
                        "-o", tmp_path / "c.h5")
    assert "--max-drop is the loss allowed: 0 or more, not -0.1" in message
    assert os.listdir(tmp_path) == []


SCRIPT = """
import sys
import numpy as np
import wcompress

print("script body ran", flush=True)
x = np.load(sys.argv[2])["x"]
wcompress.compress(sys.argv[1], x, 0.05, output=sys.argv[3], jobs=2, holdout=0.25)
"""


def test_jobs_2_from_a_plain_script_writes_the_same_bytes_as_one_process(tiny, tmp_path):
    """A script without an `if __name__ == "__main__":` guard: the spawned workers must not run it again."""
    import subprocess
    import sys

    data = tmp_path / "x.npz"
    rng = np.random.default_rng(3)
    np.savez(data, x=np.concatenate([tiny["x"], rng.random((16, 12), dtype=np.float32)]))
    one = wcompress.compress(tiny["keras"], str(data), 0.05, output=tmp_path / "one.h5", holdout=0.25).to_dict()
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    ran = subprocess.run([sys.executable, str(script), tiny["keras"], str(data), str(tmp_path / "two.h5")],
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.count("script body ran") == 1
    assert one["search_stopped_by"] is None and one["examples"] == "tuned on 60 examples, judged on 20 held out"
    assert (tmp_path / "one.h5").read_bytes() == (tmp_path / "two.h5").read_bytes()
    plans = [tmp_path / "one.h5.plan.json", tmp_path / "two.h5.plan.json"]
    assert [p.exists() for p in plans] == [one["plan"] is not None] * 2
    assert one["plan"] is None or plans[0].read_bytes() == plans[1].read_bytes()


def _stock_predictions(path, source, x):
    """The written file run by stock TensorFlow/Keras only (a container restored first)."""
    import keras
    import tensorflow as tf
    from helpers import savedmodel_predict, tf1_predict

    path = str(path)
    if path.endswith(".tflite"):
        interpreter = tf.lite.Interpreter(model_path=path)
        interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    if path.endswith(".h5") and source == "tf1":
        path = wcompress.restore(path, output=path[:-3] + ".restored/model.ckpt").output
    elif path.endswith(".h5") and source == "keras":
        path = wcompress.restore(path, output=path[:-3] + ".restored.keras").output
    elif path.endswith(".h5") and source == "savedmodel_export":
        path = wcompress.restore(path, output=path[:-3] + ".restored").output
    if source == "tf1":
        return tf1_predict(path + ".meta", path, {"input:0": x}, "output:0")
    if source == "savedmodel_export":
        (out,) = savedmodel_predict(path, x).values()
        return out
    return keras.models.load_model(path, compile=False).predict(x, verbose=0)


# (input, output name, what is written: a file kind, or the start of the one-line refusal)
STOCK_MATRIX = [
    ("keras", "c.h5", "container"), ("keras", "m.keras", "keras"), ("keras", "m.hdf5", "keras-h5"),
    ("keras", "m.tflite", "tflite"), ("keras", "dir/", "native"),
    ("keras", "m.weights.h5", "a .weights.h5 holds no model to run"),
    ("tf1", "c.h5", "container"), ("tf1", "m.tflite", "tflite"), ("tf1", "dir/", "native"),
    ("tf1", "m.keras", "a tf1-checkpoint input is written as a checkpoint prefix"),
    ("savedmodel_export", "c.h5", "container"), ("savedmodel_export", "m.tflite", "tflite"),
    ("savedmodel_export", "dir/", "native"),
    ("savedmodel_export", "m.hdf5", "a savedmodel input is written as a SavedModel folder"),
]


@pytest.mark.parametrize("source,name,expected", STOCK_MATRIX)
def test_every_output_compress_writes_loads_in_stock_tensorflow(tiny, tmp_path, source, name, expected):
    """What compress says it wrote is what stock TensorFlow/Keras runs: the held-out figure it reports is
    recomputed from the file's stock predictions. Outputs it cannot judge are refused and nothing is
    written."""
    from wcompress.workflows.metrics import agreement

    features = 10 if source == "tf1" else 12
    x = np.random.default_rng(0).random((80, features), dtype=np.float32)
    (tmp_path / "out").mkdir()
    out = str(tmp_path / "out" / name) + ("/" if name.endswith("/") else "")  # a path object drops the /
    if expected[0] == "a":
        with pytest.raises(wcompress.WcompressError, match=expected):
            wcompress.compress(tiny[source], x, 0.05, output=out, max_evals=4)
        assert os.listdir(tmp_path / "out") == []
        return
    document = wcompress.compress(tiny[source], x, 0.05, output=out, max_evals=4).to_dict()
    assert document["output_kind"] == expected and document["output_bytes"] > 0
    _, held = split_examples(len(x), 0.3)
    dense = _stock_predictions(tiny[source], source, x[held])
    ours = _stock_predictions(document["output"], source, x[held])
    assert agreement(dense, ours) == document["tuned"]["held_out_value"] >= 0.95


def test_validation_data_judges_and_an_existing_output_is_refused_before_the_search(tiny, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x, validation = rng.random((40, 12), dtype=np.float32), rng.random((30, 12), dtype=np.float32)
    out = tmp_path / "c.h5"
    # Random inputs: agreement on 30 examples moves in steps of 1/30, and a state must hold by one standard error.
    document = wcompress.compress(tiny["keras"], x, 0.2, validation=validation, output=out, max_evals=6).to_dict()
    assert document["verified"] and document["examples"] == ("tuned on 40 examples of the data arrays, judged on 30 "
                                                              "of the validation arrays")
    before = out.read_bytes()
    import sys

    search_module = sys.modules["wcompress.workflows.autotune"]  # the package exports a function of that name
    monkeypatch.setattr(search_module, "Search", lambda *a, **k: pytest.fail("the search started"))
    with pytest.raises(wcompress.WcompressError, match="output exists; pass --force") as refused:
        wcompress.compress(tiny["keras"], x, 0.2, validation=validation, output=out, max_evals=6)
    assert str(out) in str(refused.value) and out.read_bytes() == before
