"""export --tflite: the converter on our weights, int8 storage, sparse encoding where it is smaller."""

import os

import numpy as np
from helpers import MUSICNN_IN, musicnn_feed, run_cli, run_error, run_json, tf1_predict, MUSICNN_OUT


def tflite_predict(path, x):
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    out = []
    for example in x:
        interpreter.set_tensor(source, example[None].astype(np.float32))
        interpreter.invoke()
        out.append(interpreter.get_tensor(target)[0].copy())
    return np.stack(out)


def test_keras_model_exports_and_runs_like_the_original(real, faces, tmp_path):
    import keras

    x = np.load(faces["data"])["x"][:20]
    dense = keras.models.load_model(real["fer"], compile=False).predict(x, verbose=0)
    out = tmp_path / "fer.tflite"
    result = run_json("export", real["fer"], "-o", out)
    assert result["output_bytes"] == os.path.getsize(out) < 0.35 * os.path.getsize(real["fer"])
    assert np.abs(tflite_predict(out, x) - dense).max() < 0.06  # int8 weights and on-the-fly int8 inputs
    sparse = tmp_path / "sparse.hdf5"
    run_cli("sparsify", real["fer"], "--method", "relative", "--delta", "0.75", "-o", sparse)
    assert run_json("export", sparse, "-o", tmp_path / "s.tflite")["output_bytes"] < result["output_bytes"]


def test_tf1_graph_and_container_export(real, tmp_path):
    feed = musicnn_feed(2)
    dense = tf1_predict(real["musicnn"] + "/.meta", real["musicnn"] + "/", feed, MUSICNN_OUT)
    out = tmp_path / "m.tflite"
    run_cli("export", real["musicnn"], "-o", out, "--float")  # the is-training flag is frozen to false
    np.testing.assert_allclose(tflite_predict(out, feed[MUSICNN_IN]), dense, atol=1e-4)
    container = tmp_path / "m.h5"
    run_cli("pack", real["musicnn"], "-o", container)
    run_cli("export", container, "-o", tmp_path / "c.tflite", "--float")
    np.testing.assert_allclose(tflite_predict(tmp_path / "c.tflite", feed[MUSICNN_IN]), dense, atol=1e-4)


def test_export_refusals(real, tmp_path):
    assert "NAME.tflite" in run_error("export", real["fer"], "-o", tmp_path / "fer.h5")
    (tmp_path / "x.tflite").write_bytes(b"mine")
    assert "--force" in run_error("export", real["fer"], "-o", tmp_path / "x.tflite")
    assert (tmp_path / "x.tflite").read_bytes() == b"mine"
    assert "no model to convert" in run_error("export", real["mhcnuggets"], "-o", tmp_path / "w.tflite")
    assert sorted(os.listdir(tmp_path)) == ["x.tflite"]


def test_evaluate_and_autotune_speak_tflite(real, faces, tmp_path):
    exported = tmp_path / "fer.tflite"
    run_cli("export", real["fer"], "-o", exported)
    assert oct(os.stat(exported).st_mode & 0o777) == oct(0o666 & ~_umask())
    results = {r["metric"]: r["value"] for r in run_json("evaluate", exported, "--data", faces["data"], "--reference",
                                                         real["fer"])["results"]}
    assert results["fidelity"] >= 0.97 and results["maxdiff"] < 0.06
    out = tmp_path / "tuned.tflite"
    result = run_json("autotune", real["fer"], "--data", faces["data"], "--max-drop", "0.2", "--holdout", "0",
                      "--methods", "relative", "--max-layers", "0", "-o", out)
    assert result["output"] == str(out) and result["output_bytes"] == os.path.getsize(out)
    # The figures are re-measured from the .tflite itself.
    again = {r["metric"]: r["value"] for r in run_json("evaluate", out, "--data", faces["data"], "--reference",
                                                       real["fer"], "--metric", "fidelity")["results"]}
    assert again["fidelity"] == result["tuned"]["held_out_value"]
    assert "leave out --pack" in run_error("autotune", real["fer"], "--data", faces["data"], "--max-drop", "0.2",
                                           "--pack", "-o", tmp_path / "x.tflite")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_damaged_tflite_file_is_an_error_not_a_crash(real, faces, tmp_path):
    exported = tmp_path / "fer.tflite"
    run_cli("export", real["fer"], "-o", exported)
    damaged = tmp_path / "damaged.tflite"
    damaged.write_bytes(exported.read_bytes()[:40000])  # truncated: TensorFlow Lite segfaults on it
    line = run_error("evaluate", damaged, "--data", faces["data"], "--reference", real["fer"])
    assert "damaged TFLite file" in line and "SIGSEGV" in line
