import os

import numpy as np
import pytest
from helpers import (
    MUSICNN_OUT,
    assert_same_tensors,
    digest,
    musicnn_feed,
    run_cli,
    run_json,
    savedmodel_predict,
    stock_tensors,
    tf1_predict,
)

from wcompress.formats import open_model
from wcompress.methods.runner import run_passes


def test_strip_musicnn_tf1_loads_and_predicts_identically(real, tmp_path):
    src = real["musicnn"]
    before = digest(src)
    result = run_json("strip", src, "-o", str(tmp_path / "out") + "/")
    prefix = str(tmp_path / "out" / "model.ckpt")
    assert result["output"] == prefix
    # The data file shrinks by exactly the Adam slots and beta powers: 1,574,320 values, float32.
    data_in = os.path.getsize(os.path.join(src, ".data-00000-of-00001"))
    data_out = os.path.getsize(prefix + ".data-00000-of-00001")
    assert data_in - data_out == (2_366_399 - 792_079) * 4
    assert result["output_bytes"] == sum(os.path.getsize(f) for f in result["output_files"])
    feed = musicnn_feed()
    expected = tf1_predict(os.path.join(src, ".meta"), src + "/", feed, MUSICNN_OUT)
    got = tf1_predict(prefix + ".meta", prefix, feed, MUSICNN_OUT)
    assert np.array_equal(expected, got)
    kept = stock_tensors(prefix)
    assert len(kept) == 64 and not any("Adam" in k or "power" in k for k in kept)
    assert digest(src) == before


def test_strip_tiny_tf1_checkpoint(tiny, tmp_path):
    out = tmp_path / "s" / "model.ckpt"
    run_cli("strip", tiny["tf1"], "-o", out)
    x = np.random.RandomState(5).rand(3, 10).astype("float32")
    a = tf1_predict(tiny["tf1"] + ".meta", tiny["tf1"], {"input:0": x}, "output:0")
    b = tf1_predict(str(out) + ".meta", str(out), {"input:0": x}, "output:0")
    assert np.array_equal(a, b)
    assert sorted(stock_tensors(out)) == ["fc1/bias", "fc1/kernel", "fc2/bias", "fc2/kernel"]


def test_strip_fer_legacy_h5(real, tmp_path):
    import keras

    out = tmp_path / "fer.h5"
    run_cli("strip", real["fer"], "-o", out)
    x = np.random.RandomState(0).uniform(-1, 1, (4, 64, 64, 1)).astype("float32")
    a = keras.models.load_model(real["fer"], compile=False).predict(x, verbose=0)
    b = keras.models.load_model(out, compile=False).predict(x, verbose=0)
    assert np.array_equal(a, b)
    assert not any(k.startswith("optimizer_weights") for k in stock_tensors(out))
    assert os.path.getsize(out) < os.path.getsize(real["fer"]) * 0.5


def test_strip_basic_pitch_savedmodel(real, tmp_path):
    out = tmp_path / "nmp"
    result = run_json("strip", real["basic-pitch"], "-o", out)
    assert result["output_bytes"] < result["input_bytes"]
    x = np.random.RandomState(0).rand(1, 43844, 1).astype("float32")
    a = savedmodel_predict(real["basic-pitch"], x)
    b = savedmodel_predict(out, x)
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert not any("OPTIMIZER_SLOT" in k for k in stock_tensors(out))


def test_strip_keras_file(tiny, tmp_path):
    import keras

    out = tmp_path / "tiny.keras"
    run_cli("strip", tiny["keras"], "-o", out)
    a = keras.models.load_model(tiny["keras"]).predict(tiny["x"], verbose=0)
    b = keras.models.load_model(out).predict(tiny["x"], verbose=0)
    assert np.array_equal(a, b)
    assert not any(k.startswith("optimizer") for k in stock_tensors(out))


def test_strip_weights_h5(tiny, tmp_path):
    from conftest import build_tiny_keras

    out = tmp_path / "tiny.weights.h5"
    run_cli("strip", tiny["weights_h5"], "-o", out)
    a, b = build_tiny_keras(), build_tiny_keras()
    a.load_weights(tiny["weights_h5"])
    b.load_weights(out)
    assert np.array_equal(a.predict(tiny["x"], verbose=0), b.predict(tiny["x"], verbose=0))


def test_strip_tf2_checkpoint_restores_into_objects(tiny, tmp_path):
    import tensorflow as tf
    from conftest import build_tiny_keras

    out = tmp_path / "tf2" / "ckpt"
    run_cli("strip", tiny["tf2"], "-o", out)
    kept = stock_tensors(out)
    # Keras 3 optimizers track the model's own variables; TF may store them under optimizer/ keys.
    assert not any(k.startswith("optimizer/_variables/") or "_iterations" in k for k in kept)
    assert sum("_trainable_variables" in k for k in kept) == 8
    a, b = build_tiny_keras(), build_tiny_keras()
    tf.train.Checkpoint(model=a).read(tiny["tf2"]).assert_existing_objects_matched()
    tf.train.Checkpoint(model=b).read(str(out)).assert_existing_objects_matched()
    assert np.array_equal(a.predict(tiny["x"], verbose=0), b.predict(tiny["x"], verbose=0))


@pytest.mark.parametrize("fixture,name", [
    ("real", "musicnn"), ("real", "fer"), ("real", "basic-pitch"), ("real", "mhcnuggets"),
    ("tiny", "keras"), ("tiny", "weights_h5"), ("tiny", "tf2"), ("tiny", "tf1"),
])
def test_round_trip_without_pass_is_bit_exact(request, tmp_path, fixture, name):
    src = request.getfixturevalue(fixture)[name]
    store = open_model(src)
    dest = str(tmp_path / "out") + ("/" if store.format.endswith("checkpoint") else os.path.basename(str(src)))
    result = run_passes(store, [], str(dest))
    assert result.output.files and all(os.path.exists(f) for f in result.output.files)
    assert_same_tensors(stock_tensors(src if store.format != "tf1-checkpoint" else store.prefix),
                        stock_tensors(result.output.path))
    assert open_model(result.output.path).format == store.format
