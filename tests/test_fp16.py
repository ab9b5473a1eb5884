"""fp16: outputs load in stock TF/Keras, predict within float16 tolerance, and are smaller."""

import os

import h5py
import numpy as np
import pytest
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


def _tf1_graph_checkpoint(prefix, arrays):
    """A TF1 graph holding `arrays` as variables (summed into `output`), saved with its .meta."""
    import tensorflow as tf

    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        variables = [tf.compat.v1.get_variable(k, initializer=tf.constant(v)) for k, v in arrays.items()]
        tf.add_n([tf.reduce_sum(v) for v in variables], name="output")
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(sess, prefix)
    return prefix


def test_fp16_overflow_keep_or_clip(tmp_path):
    big = np.full((64, 64), 1.0, dtype=np.float32)
    big[0, 0] = 1e6
    prefix = _tf1_graph_checkpoint(str(tmp_path / "ck" / "model.ckpt"),
                                   {"fc/kernel": big, "fc2/kernel": np.ones((64, 64), np.float32)})
    kept = run_json("fp16", prefix, "--cover", "1.0", "-o", tmp_path / "k" / "model.ckpt")
    assert kept["passes"]["fp16"]["overflow"] == {"fc/kernel": 1}
    assert stock_tensors(tmp_path / "k" / "model.ckpt")["fc/kernel"].dtype == np.float32
    run_cli("fp16", prefix, "--cover", "1.0", "--on-overflow", "clip", "-o", tmp_path / "c" / "model.ckpt")
    clipped = stock_tensors(tmp_path / "c" / "model.ckpt")["fc/kernel"]
    assert clipped.dtype == np.float16 and float(clipped[0, 0]) == 65504.0


def test_fp16_tf2_checkpoint_refused_because_stock_restore_refuses_float16(tiny, tmp_path):
    import tensorflow as tf
    from conftest import build_tiny_keras

    out = tmp_path / "c16"
    line = run_error("fp16", tiny["tf2"], "--min-bytes", "1000", "-o", out / "ckpt")
    assert "pack --values float16" in line and ".keras" in line
    assert not out.exists()
    # Why: stock TensorFlow restores only a variable's own dtype. A float16 copy of the checkpoint,
    # made with stock ops, fails both restore() and read() into the float32 model.
    reader = tf.train.load_checkpoint(tiny["tf2"])
    dtypes = reader.get_variable_to_dtype_map()
    half = {k: tf.cast(reader.get_tensor(k), tf.float16) if d == tf.float32 else reader.get_tensor(k)
            for k, d in dtypes.items()}
    tf.raw_ops.SaveV2(prefix=str(tmp_path / "half" / "ckpt"), tensor_names=list(half),
                      shape_and_slices=[""] * len(half), tensors=list(half.values()))
    for method in ("restore", "read"):
        with pytest.raises(tf.errors.InvalidArgumentError, match="expected dtype float does not equal"):
            getattr(tf.train.Checkpoint(model=build_tiny_keras()), method)(str(tmp_path / "half" / "ckpt"))


def test_fp16_tf1_checkpoint_without_meta_refused(tmp_path):
    from wcompress.formats.bundle import write_bundle

    prefix = str(tmp_path / "ck" / "model.ckpt")
    os.makedirs(os.path.dirname(prefix))
    write_bundle(prefix, [("fc/kernel", np.ones((64, 64), np.float32))])
    assert ".meta" in run_error("fp16", prefix, "-o", tmp_path / "out" / "model.ckpt")
    assert not (tmp_path / "out").exists()


def _restore_and_run(meta, prefix, feed, output, resave=None):
    """Stock import_meta_graph + saver.restore + run; optionally save again with the same Saver."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        saver = tf.compat.v1.train.import_meta_graph(str(meta))
        saver.restore(sess, str(prefix))
        result = sess.run(output, feed)
        if resave:
            saver.save(sess, str(resave))
    return result


@pytest.mark.parametrize("kind", ["tf1_resource", "tf1_variablev2"])
def test_fp16_tf1_graph_resource_and_variablev2(tiny, tmp_path, kind):
    import tensorflow as tf
    from wcompress.formats.tf1_meta import load_meta_graph_def

    src, out = tiny[kind], tmp_path / "h" / "model.ckpt"
    result = run_json("fp16", src, "--cover", "1.0", "-o", out)
    cast = set(result["passes"]["fp16"]["cast_tensors"])
    assert cast == {"fc1/kernel", "fc1/bias", "fc2/kernel", "fc2/bias"}
    tensors = stock_tensors(out)
    assert {k for k, v in tensors.items() if v.dtype == np.float16} == cast
    assert not any("Adam" in k for k in tensors)  # training state dropped
    graph = load_meta_graph_def(str(out) + ".meta").graph_def
    variable_op = "VarHandleOp" if kind == "tf1_resource" else "VariableV2"
    half = tf.float16.as_datatype_enum
    assert {n.name for n in graph.node if n.op == variable_op and n.attr["dtype"].type == half} == cast
    x = np.random.RandomState(0).rand(16, 10).astype("float32")
    expected = _restore_and_run(src + ".meta", src, {"input:0": x}, "output:0")
    got = _restore_and_run(str(out) + ".meta", out, {"input:0": x}, "output:0", resave=tmp_path / "again" / "m")
    assert got.dtype == np.float32
    assert 0 < np.abs(got - expected).max() < 2e-3
    # The exported Saver also saves what it restores: float16.
    again = stock_tensors(tmp_path / "again" / "m")
    assert {k for k, v in again.items() if v.dtype == np.float16} == cast


def test_merge_float16_resource_graphs(tiny, tmp_path):
    from conftest import build_tf1_checkpoint

    other = build_tf1_checkpoint(str(tmp_path / "other" / "model.ckpt"), resource=True)
    out = tmp_path / "m" / "model.ckpt"
    run_cli("merge", tiny["tf1_resource"], other, "--dtype", "float16", "--input-tensor", "input:0",
            "--output-tensor", "output:0", "-o", out)
    assert any(v.dtype == np.float16 for v in stock_tensors(out).values())
    x = np.random.RandomState(1).rand(8, 10).astype("float32")
    members = [_restore_and_run(p + ".meta", p, {"input:0": x}, "output:0") for p in (tiny["tf1_resource"], other)]
    got = _restore_and_run(str(out) + ".meta", out, {"input:0": x}, "output:0")
    assert np.abs(got - (members[0] + members[1]) / 2).max() < 2e-3


def _serve_tf2(folder, x):
    """tf.saved_model.load + the serving signature."""
    import tensorflow as tf

    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
    (name,) = serve.structured_input_signature[1]
    return {k: v.numpy() for k, v in serve(**{name: tf.constant(x)}).items()}


@pytest.mark.parametrize("kind", ["savedmodel_tf1", "savedmodel_module", "savedmodel_export", "savedmodel_keras"])
def test_fp16_savedmodel_kinds_load_in_stock_loaders(tiny, tmp_path, kind):
    import keras
    import tensorflow as tf
    from helpers import savedmodel_predict

    if kind == "savedmodel_keras":  # tf.saved_model.save of a Keras 3 model: TF2 loader only, even unchanged
        src = str(tmp_path / "keras_sm")
        tf.saved_model.save(keras.models.load_model(tiny["keras"]), src)
        loaders = (_serve_tf2,)
    else:
        src, loaders = tiny[kind], (_serve_tf2, savedmodel_predict)
    out = tmp_path / "sm16"
    result = run_json("fp16", src, "--cover", "1.0", "-o", out)
    cast = result["passes"]["fp16"]["cast_tensors"]
    assert cast and all(stock_tensors(out)[k].dtype == np.float16 for k in cast)
    x = np.random.RandomState(0).rand(16, 12).astype("float32")
    for run in loaders:
        expected, got = run(src, x), run(out, x)
        assert sorted(got) == sorted(expected)
        for key in expected:
            assert got[key].dtype == np.float32
            scale = max(1.0, float(np.abs(expected[key]).max()))
            assert 0 < np.abs(got[key] - expected[key]).max() < 2e-3 * scale, (run.__name__, key)
    if kind == "savedmodel_module":  # TF2 kinds: the loaded variables are float16 themselves
        loaded = tf.saved_model.load(str(out))
        assert {v.dtype for v in (loaded.w1, loaded.b1, loaded.w2)} == {tf.float16}


def test_fp16_help_says_what_loads_where():
    help_text = " ".join(run_cli("fp16", "--help").output.split())
    for phrase in ("keras.models.load_model", "import_meta_graph", "tf.saved_model.load", "load_weights",
                   "TF2 object checkpoints", "pack --values float16"):
        assert phrase in help_text, phrase


def test_fp16_bad_options(tiny, tmp_path):
    assert "one of --cover" in run_error("fp16", tiny["keras"], "--cover", "0.5", "--min-bytes", "10",
                                         "-o", tmp_path / "x.keras")
    assert "--cover must be" in run_error("fp16", tiny["keras"], "--cover", "2", "-o", tmp_path / "x.keras")
    assert "no float32 or bfloat16 tensor" in run_error("fp16", tiny["keras"], "--tensors", "nope*", "-o", tmp_path / "x.keras")


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
