"""fp16: outputs load in stock TF/Keras, predict within float16 tolerance, and are smaller."""

import os

import h5py
import numpy as np
from helpers import MUSICNN_OUT, musicnn_feed, run_cli, run_error, run_json, stock_tensors, tf1_predict


def _payload(path):
    """Bytes of tensor data stored in an HDF5 file."""
    total = []
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda n, o: total.append(o.id.get_storage_size()) if isinstance(o, h5py.Dataset) else None)
    return sum(total)


def test_fp16_musicnn_tf1_meta_rewritten(real, tmp_path):
    src = real["musicnn"]
    result = run_json("fp16", src, "-o", str(tmp_path / "h") + "/")
    run_cli("strip", src, "-o", str(tmp_path / "f") + "/")
    half, full = str(tmp_path / "h" / "model.ckpt"), str(tmp_path / "f" / "model.ckpt")
    cast = result["passes"]["fp16"]["cast_tensors"]
    assert len(cast) == 8  # the fewest tensors holding 98% of the bytes
    tensors = stock_tensors(half)
    assert {k for k, v in tensors.items() if v.dtype == np.float16} == set(cast)
    data = ".data-00000-of-00001"
    saved = 1 - os.path.getsize(half + data) / os.path.getsize(full + data)
    assert saved >= 0.45, saved
    feed = musicnn_feed(4)
    expected = tf1_predict(os.path.join(src, ".meta"), src + "/", feed, MUSICNN_OUT)
    got = tf1_predict(half + ".meta", half, feed, MUSICNN_OUT)
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-2


def test_fp16_fer_keras_h5_gets_float16_policy(real, tmp_path):
    import keras

    out, full = tmp_path / "fer16.h5", tmp_path / "fer32.h5"
    run_cli("fp16", real["fer"], "-o", out)
    run_cli("strip", real["fer"], "-o", full)
    model = keras.models.load_model(out, compile=False)
    policies = {layer.name: layer.dtype_policy.name for layer in model.layers}
    assert policies["conv2d_1"] == "float16"
    x = np.random.RandomState(0).uniform(-1, 1, (8, 64, 64, 1)).astype("float32")
    reference = keras.models.load_model(real["fer"], compile=False).predict(x, verbose=0)
    diff = np.abs(model.predict(x, verbose=0).astype(np.float32) - reference)
    assert diff.max() < 1e-2
    # The weights payload halves; the file's HDF5 structure and 24 KB model config do not shrink.
    assert 1 - _payload(out) / _payload(full) >= 0.45
    assert os.path.getsize(out) < os.path.getsize(full)


def test_fp16_keras_file_and_weights(tiny, tmp_path):
    import keras
    from conftest import build_tiny_keras

    out = tmp_path / "t16.keras"
    run_cli("fp16", tiny["keras"], "--tensors", "hidden*", "-o", out)
    model = keras.models.load_model(out)
    assert model.get_layer("hidden").dtype_policy.name == "float16"
    assert model.get_layer("head").dtype_policy.name == "float32"
    reference = keras.models.load_model(tiny["keras"]).predict(tiny["x"], verbose=0)
    assert np.abs(model.predict(tiny["x"], verbose=0) - reference).max() < 1e-2
    # weights-only: stored float16, loads into a float32 model (Keras casts on assignment).
    weights = tmp_path / "t16.weights.h5"
    run_cli("fp16", tiny["weights_h5"], "--cover", "0.9", "-o", weights)
    assert any(v.dtype == np.float16 for v in stock_tensors(weights).values())
    fresh = build_tiny_keras()
    fresh.load_weights(weights)
    assert np.abs(fresh.predict(tiny["x"], verbose=0) - reference).max() < 1e-2


def test_fp16_tf2_checkpoint_stores_float16(tiny, tmp_path):
    import tensorflow as tf
    from conftest import build_tiny_keras

    out = tmp_path / "c16" / "ckpt"
    result = run_json("fp16", tiny["tf2"], "--min-bytes", "1000", "-o", out)
    tensors = stock_tensors(out)
    assert {k for k, v in tensors.items() if v.dtype == np.float16} == set(result["passes"]["fp16"]["cast_tensors"])
    assert not any(k.startswith("optimizer/_variables/") for k in tensors)  # training state dropped
    # The recipe in docs/fp16-average-merge.md, verbatim apart from paths.
    reader = tf.train.load_checkpoint(str(out))
    dtypes = reader.get_variable_to_dtype_map()
    wide = {k: tf.cast(reader.get_tensor(k), tf.float32) if d == tf.float16 else reader.get_tensor(k)
            for k, d in dtypes.items()}
    tf.raw_ops.SaveV2(prefix=str(tmp_path / "wide" / "ckpt"), tensor_names=list(wide),
                      shape_and_slices=[""] * len(wide), tensors=list(wide.values()))
    a, b = build_tiny_keras(), build_tiny_keras()
    tf.train.Checkpoint(model=a).read(tiny["tf2"]).assert_existing_objects_matched()
    tf.train.Checkpoint(model=b).read(str(tmp_path / "wide" / "ckpt")).assert_existing_objects_matched()
    assert np.abs(a.predict(tiny["x"], verbose=0) - b.predict(tiny["x"], verbose=0)).max() < 1e-2


def test_fp16_overflow_keep_or_clip(tmp_path):
    from wcompress.io.bundle import write_bundle

    prefix = str(tmp_path / "ck" / "model.ckpt")
    os.makedirs(os.path.dirname(prefix))
    big = np.full((64, 64), 1.0, dtype=np.float32)
    big[0, 0] = 1e6
    write_bundle(prefix, [("fc/kernel", big), ("fc2/kernel", np.ones((64, 64), np.float32))])
    kept = run_json("fp16", prefix, "--cover", "1.0", "-o", tmp_path / "k")
    assert kept["passes"]["fp16"]["overflow"] == {"fc/kernel": 1}
    assert stock_tensors(tmp_path / "k")["fc/kernel"].dtype == np.float32
    run_cli("fp16", prefix, "--cover", "1.0", "--on-overflow", "clip", "-o", tmp_path / "c")
    clipped = stock_tensors(tmp_path / "c")["fc/kernel"]
    assert clipped.dtype == np.float16 and float(clipped[0, 0]) == 65504.0


def test_fp16_bad_options(tiny, tmp_path):
    assert "one of --cover" in run_error("fp16", tiny["keras"], "--cover", "0.5", "--min-bytes", "10",
                                         "-o", tmp_path / "x.keras")
    assert "--cover must be" in run_error("fp16", tiny["keras"], "--cover", "2", "-o", tmp_path / "x.keras")
    assert "no float32 tensor" in run_error("fp16", tiny["keras"], "--tensors", "nope*", "-o", tmp_path / "x.keras")


def test_fp16_savedmodel_loads_in_stock_tf(real, tmp_path):
    from helpers import savedmodel_predict

    out = tmp_path / "nmp16"
    result = run_json("fp16", real["basic-pitch"], "-o", out)
    assert result["passes"]["fp16"]["cast_tensors"]
    assert any(v.dtype == np.float16 for v in stock_tensors(out).values())
    x = np.random.RandomState(0).rand(1, 43844, 1).astype("float32")
    a, b = savedmodel_predict(real["basic-pitch"], x), savedmodel_predict(out, x)
    for key in a:
        assert np.abs(a[key] - b[key]).max() < 1e-2, key
