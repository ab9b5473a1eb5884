"""average (seed 000's checkpoint averaging) and merge (its ensemble in one graph)."""

import os

import numpy as np
import pytest
from helpers import MUSICNN_IN, MUSICNN_OUT, musicnn_feed, run_cli, run_error, run_json, stock_tensors, tf1_predict


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    """Checkpoints written during a real (tiny) training run, in TF1, TF2 and Keras-weights form."""
    import keras
    import tensorflow as tf
    from conftest import build_tiny_keras

    root = tmp_path_factory.mktemp("run")
    rng = np.random.RandomState(4)
    x, y = rng.rand(64, 12).astype("float32"), rng.rand(64, 3).astype("float32")
    keras.utils.set_random_seed(2)
    model = build_tiny_keras()
    model.compile(optimizer="adam", loss="mse")
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    tf2 = []
    os.makedirs(root / "keras")
    for epoch in range(3):
        model.fit(x, y, epochs=1, verbose=0)
        tf2.append(ckpt.save(str(root / "tf2" / "ckpt")))
        model.save_weights(str(root / "keras" / f"w-{(epoch + 1) * 10}.weights.h5"))

    graph = tf.Graph()
    with graph.as_default():
        inp = tf.compat.v1.placeholder(tf.float32, (None, 5), name="input")
        w = tf.compat.v1.get_variable("fc/kernel", (5, 2))
        out = tf.identity(tf.matmul(inp, w), name="output")
        step = tf.compat.v1.train.get_or_create_global_step()
        train = tf.compat.v1.train.AdamOptimizer(0.1).minimize(tf.reduce_sum(out ** 2), global_step=step)
        saver = tf.compat.v1.train.Saver(max_to_keep=10)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for k in range(1, 5):
                sess.run(train, {inp: rng.rand(4, 5)})
                saver.save(sess, str(root / "tf1" / "model.ckpt"), global_step=k * 100)
    return {"tf2": tf2, "tf1": str(root / "tf1"), "keras": str(root / "keras")}


def _mean(paths, name):
    return np.mean(np.stack([stock_tensors(p)[name].astype(np.float64) for p in paths]), axis=0)


def test_average_tf2_equals_numpy_mean(training_run, tmp_path):
    paths = training_run["tf2"]
    out = tmp_path / "avg" / "ckpt"
    result = run_json("average", *paths, "-o", out)
    averaged = stock_tensors(out)
    assert result["averaged_tensors"] == 10
    for name, value in averaged.items():
        if name.startswith("optimizer/_trainable_variables/") or name.startswith("model/"):
            assert value.dtype == np.float32
            np.testing.assert_array_equal(value, _mean(paths, name).astype(np.float32))
    assert not any(k.startswith("optimizer/_variables/") for k in averaged)
    assert averaged["save_counter/.ATTRIBUTES/VARIABLE_VALUE"] == 3  # step counter from the last


def test_average_tf1_dir_and_steps(training_run, tmp_path):
    out = tmp_path / "avg" / "model.ckpt"
    result = run_json("average", "--dir", training_run["tf1"], "--steps", "200:300", "-o", out)
    assert [os.path.basename(p) for p in result["inputs"]] == ["model.ckpt-200", "model.ckpt-300"]
    picked = [os.path.join(training_run["tf1"], f"model.ckpt-{s}") for s in (200, 300)]
    averaged = stock_tensors(out)
    np.testing.assert_array_equal(averaged["fc/kernel"], _mean(picked, "fc/kernel").astype(np.float32))
    assert averaged["global_step"] == 3  # from the last checkpoint (saved after the third step)
    assert sorted(averaged) == ["fc/kernel", "global_step"]
    x = np.ones((1, 5), np.float32)
    got = tf1_predict(str(out) + ".meta", str(out), {"input:0": x}, "output:0")
    # float32 sums in another order than numpy: a few ulps apart
    np.testing.assert_allclose(got, x @ averaged["fc/kernel"], rtol=1e-5, atol=1e-7)


def test_average_keras_weights_with_open_range(training_run, tmp_path):
    out = tmp_path / "avg.weights.h5"
    result = run_json("average", "--dir", training_run["keras"], "--steps", "20:", "-o", out)
    assert [os.path.basename(p) for p in result["inputs"]] == ["w-20.weights.h5", "w-30.weights.h5"]
    np.testing.assert_array_equal(stock_tensors(out)["layers/dense/vars/0"],
                                  _mean(result["inputs"], "layers/dense/vars/0").astype(np.float32))


def test_average_errors(training_run, tiny, tmp_path):
    line = run_error("average", training_run["tf2"][0], tiny["tf1"], "-o", tmp_path / "x")
    assert "do not match" in line
    assert "steps found: 100, 200, 300, 400" in run_error("average", "--dir", training_run["tf1"],
                                                          "--steps", "500:600", "-o", tmp_path / "y")
    assert "FROM:TO" in run_error("average", "--dir", training_run["tf1"], "--steps", "500", "-o", tmp_path / "z")


def test_merge_musicnn_graphs(real, tmp_path):
    """The two real MTT graphs (same 187x96 input, same 50 tags), weighted 0.6 / 0.4, in one graph."""
    feed = musicnn_feed(3)
    a = tf1_predict(os.path.join(real["musicnn"], ".meta"), real["musicnn"] + "/", feed, MUSICNN_OUT)
    b = tf1_predict(os.path.join(real["musicnn-vgg"], ".meta"), real["musicnn-vgg"] + "/", feed, MUSICNN_OUT)
    args = [real["musicnn"], real["musicnn-vgg"], "--weights", "0.6,0.4", "--input-tensor", MUSICNN_IN,
            "--output-tensor", MUSICNN_OUT, "--feed", "model/Placeholder_2:0=false"]
    for dtype, tolerance in (("float32", 1e-5), ("float16", 1e-2)):
        result = run_json("merge", *args, "--dtype", dtype, "-o", str(tmp_path / dtype) + "/")
        prefix = result["output"]
        got = tf1_predict(prefix + ".meta", prefix, {"input:0": feed[MUSICNN_IN]}, "output:0")
        assert np.abs(got - (0.6 * a + 0.4 * b)).max() < tolerance
        assert result["output_bytes"] == sum(os.path.getsize(f) for f in result["output_files"])
        assert [m["bytes"] for m in result["members"]] == [
            run_json("profile", p)["file_bytes"] for p in (real["musicnn"], real["musicnn-vgg"])]
    keys = stock_tensors(prefix)
    assert any(k.startswith("model0/") for k in keys) and any(k.startswith("model1/") for k in keys)


def test_merge_design_card_line_verbatim(real, tmp_path):
    """`wcompress merge a.ckpt b.ckpt --weights 0.6,0.4 --dtype float16`: input, output and the
    is-training flag are inferred, the output goes beside the first model and runs fed only its input."""
    import shutil

    a, b = tmp_path / "MTT_musicnn", tmp_path / "MTT_vgg"
    shutil.copytree(real["musicnn"], a)
    shutil.copytree(real["musicnn-vgg"], b)
    result = run_cli("merge", a, b, "--weights", "0.6,0.4", "--dtype", "float16")
    assert f"input {MUSICNN_IN}, output {MUSICNN_OUT}, --feed model/Placeholder_2:0=false" in result.stdout
    prefix = str(tmp_path / "MTT_musicnn-merged" / "model.ckpt")
    feed = musicnn_feed(2)
    expected = 0.6 * tf1_predict(str(a / ".meta"), str(a) + "/", feed, MUSICNN_OUT) + 0.4 * tf1_predict(
        str(b / ".meta"), str(b) + "/", feed, MUSICNN_OUT)
    got = tf1_predict(prefix + ".meta", prefix, {"input:0": feed[MUSICNN_IN]}, "output:0")
    assert np.abs(got - expected).max() < 1e-2


def test_merge_refuses_placeholders_it_cannot_fill(tmp_path):
    """An output that needs a second float placeholder is refused, naming it, unless --feed fixes it."""
    import tensorflow as tf

    prefixes = []
    for i in range(2):
        graph = tf.Graph()
        with graph.as_default():
            x = tf.compat.v1.placeholder(tf.float32, (None, 3), name="x")
            scale = tf.compat.v1.placeholder(tf.float32, (), name="scale")
            w = tf.compat.v1.get_variable("w", (3, 2))
            tf.identity(tf.matmul(x, w) * scale, name="y")
            with tf.compat.v1.Session() as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                prefixes.append(tf.compat.v1.train.Saver().save(sess, str(tmp_path / f"m{i}" / "model.ckpt")))
    line = run_error("merge", *prefixes, "--input-tensor", "x:0", "--output-tensor", "y:0", "-o", str(tmp_path / "out") + "/")
    assert "also needs scale:0 (float32)" in line and "--feed" in line
    assert not os.path.exists(tmp_path / "out")
    run_cli("merge", *prefixes, "--input-tensor", "x", "--output-tensor", "y", "--feed", "scale=2", "-o",
            str(tmp_path / "out") + "/")
    got = tf1_predict(str(tmp_path / "out" / "model.ckpt.meta"), str(tmp_path / "out" / "model.ckpt"),
                      {"input:0": np.ones((1, 3), np.float32)}, "output:0")
    assert got.shape == (1, 2)


def test_merge_two_copies_of_one_graph(real, tmp_path):
    """Two members with the same graph and names (MTT_musicnn twice): each under its own scope; written
    beside the first by default; the merge of a model with itself is that model."""
    import shutil

    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    shutil.copytree(real["musicnn"], a)
    shutil.copytree(real["musicnn"], b)
    run_cli("merge", a, b, "--weights", "0.6,0.4")
    prefix = str(tmp_path / "a.ckpt-merged" / "model.ckpt")
    feed = musicnn_feed(2)
    expected = tf1_predict(str(a / ".meta"), str(a) + "/", feed, MUSICNN_OUT)
    got = tf1_predict(prefix + ".meta", prefix, {"input:0": feed[MUSICNN_IN]}, "output:0")
    assert np.abs(got - expected).max() < 1e-5


def _tf1_members(root, build, count=2):
    """`count` TF1 checkpoints of the graph `build(tf)` makes, each with its own random weights."""
    import tensorflow as tf

    prefixes = []
    for i in range(count):
        graph = tf.Graph()
        with graph.as_default():
            build(tf)
            with tf.compat.v1.Session() as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                prefixes.append(tf.compat.v1.train.Saver().save(sess, str(root / f"m{i}" / "model.ckpt")))
    return prefixes


def test_merge_never_writes_a_graph_that_cannot_run(tmp_path):
    """The staged merge is run on a batch of zeros before the rename: a graph that fails there is
    refused with TensorFlow's own cause, and nothing is written."""
    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, (None, 3), name="x")
        check = tf.debugging.assert_positive(tf.reduce_sum(tf.abs(x)) + 0.0, message="input is all zeros")
        with tf.control_dependencies([check]):
            tf.identity(tf.matmul(x, tf.compat.v1.get_variable("w", (3, 2))), name="y")

    out = tmp_path / "out"
    line = run_error("merge", *_tf1_members(tmp_path, build), "--output-tensor", "y", "-o", str(out) + "/")
    assert "does not run on a batch of zeros" in line and "input is all zeros" in line
    assert "Graph execution error" not in line
    assert not os.path.exists(out) and not [n for n in os.listdir(tmp_path) if n.startswith(".wcompress")]


def test_merge_output_inference_lists_candidates(tmp_path):
    """Two heads equally deep in the graph: no guess, one line naming both."""
    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, (None, 3), name="x")
        tf.identity(tf.matmul(x, tf.compat.v1.get_variable("w1", (3, 2))), name="head_a")
        tf.identity(tf.matmul(x, tf.compat.v1.get_variable("w2", (3, 2))), name="head_b")

    prefixes = _tf1_members(tmp_path, build)
    line = run_error("merge", *prefixes, "-o", tmp_path / "out")
    assert "--output-tensor" in line and "head_a:0" in line and "head_b:0" in line
    result = run_json("merge", *prefixes, "--output-tensor", "head_b", "-o", str(tmp_path / "out") + "/")
    assert (result["member_input"], result["member_output"]) == ("x:0", "head_b:0")


def test_merge_output_flag_is_the_output_path(two_keras, tmp_path):
    """-o/--output is the output file for every command (merge used to take --output as a tensor name)."""
    out = tmp_path / "ensemble.keras"
    run_cli("merge", *two_keras, "--output", out)
    assert os.path.isfile(out)
    assert "No such option '--out'" in run_cli("merge", *two_keras, "--out", tmp_path / "x.keras",
                                               exit_code=2).stderr


def test_merge_checks_budget(real, tmp_path):
    line = run_error("merge", real["musicnn"], real["musicnn-vgg"], "--budget", "1MB", "-o", str(tmp_path / "b") + "/")
    assert "over the budget of 1,000,000 B" in line
    assert not os.path.exists(tmp_path / "b")


@pytest.fixture(scope="module")
def two_keras(tiny, tmp_path_factory):
    import keras
    from conftest import build_tiny_keras

    keras.utils.set_random_seed(9)
    other = build_tiny_keras()
    path = str(tmp_path_factory.mktemp("k") / "other.keras")
    other.save(path)
    return tiny["keras"], path


def test_merge_keras_models(two_keras, tiny, tmp_path):
    import keras

    a_path, b_path = two_keras
    out = tmp_path / "ensemble.keras"
    run_cli("merge", a_path, b_path, "--weights", "0.6,0.4", "-o", out)
    merged = keras.models.load_model(out)  # stock Keras, safe mode, no custom objects
    assert {type(layer).__name__ for layer in merged.layers} <= {"InputLayer", "Functional", "Rescaling", "Add"}
    a = keras.models.load_model(a_path).predict(tiny["x"], verbose=0)
    b = keras.models.load_model(b_path).predict(tiny["x"], verbose=0)
    np.testing.assert_allclose(merged.predict(tiny["x"], verbose=0), 0.6 * a + 0.4 * b, atol=1e-5)
    half = tmp_path / "ensemble16.keras"
    run_cli("merge", a_path, b_path, "--weights", "0.6,0.4", "--dtype", "float16", "-o", half)
    got = keras.models.load_model(half).predict(tiny["x"], verbose=0)
    assert np.abs(got - (0.6 * a + 0.4 * b)).max() < 1e-2


def test_merge_fer_with_its_sparsified_variant(real, tmp_path):
    import keras

    variant = tmp_path / "fer-sparse.hdf5"
    run_cli("sparsify", real["fer"], "--method", "relative", "--delta", "0.3", "-o", variant)
    out = tmp_path / "fer-ensemble.keras"
    run_cli("merge", real["fer"], variant, "--weights", "0.5,0.5", "-o", out)
    x = np.random.RandomState(3).uniform(-1, 1, (4, 64, 64, 1)).astype("float32")
    a = keras.models.load_model(real["fer"], compile=False).predict(x, verbose=0)
    b = keras.models.load_model(variant, compile=False).predict(x, verbose=0)
    np.testing.assert_allclose(keras.models.load_model(out).predict(x, verbose=0), 0.5 * a + 0.5 * b, atol=1e-5)


@pytest.mark.parametrize("args,needle", [
    (["--weights", "0.5,0.3,0.2"], "3 weights for 2 models"),
    (["--weights", "1.2,-0.2"], "must not be negative"),
    (["--weights", "0.5,0.6"], "sum to 1.1, not 1"),
])
def test_merge_weight_errors(two_keras, tmp_path, args, needle):
    assert needle in run_error("merge", *two_keras, *args, "-o", tmp_path / "m.keras")


def test_merge_shape_and_weights_only_errors(real, tiny, two_keras, tmp_path):
    assert "differ from" in run_error("merge", tiny["keras"], real["fer"], "-o", tmp_path / "m.keras")
    assert "weights only" in run_error("merge", tiny["keras"], tiny["weights_h5"], "-o", tmp_path / "m.keras")
    run_cli("merge", *two_keras, "--weights", "2,2", "--no-normalize", "-o", tmp_path / "ok.keras")
