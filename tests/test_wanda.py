"""sparsify --method wanda: |w| x input norm per output channel, from calibration inputs."""

import numpy as np
import pytest
from helpers import run_cli, run_error, run_json, sparsified_figures, stock_tensors


@pytest.fixture(scope="module")
def calibration(faces, tmp_path_factory):
    path = tmp_path_factory.mktemp("wanda") / "calib.npz"
    np.savez(path, x=np.load(faces["data"])["x"][:40])
    return str(path)


def test_zeroed_positions_match_the_definition(real, calibration, tmp_path):
    import keras

    out = tmp_path / "w.hdf5"
    result = run_json("sparsify", real["fer"], "--method", "wanda", "--sparsity", "0.5", "--data", calibration,
                      "-o", out)
    assert result["sparsify"]["method"] == "wanda" and result["sparsify"]["groups"] == "row"
    # conv2d_6: a real 1x1 convolution with stride 2 (a residual shortcut), 64 inputs x 128 outputs; its rows
    # of X are the input pixels it reads, every other one in each direction.
    model = keras.models.load_model(real["fer"], compile=False)
    layer = model.get_layer("conv2d_6")
    assert layer.kernel_size == (1, 1) and layer.strides == (2, 2)
    x = np.load(calibration)["x"]
    inputs = keras.Model(model.inputs, layer.input).predict(x, verbose=0)[:, ::2, ::2, :]
    norms = np.sqrt((inputs.reshape(-1, 64).astype(np.float64) ** 2).sum(axis=0))
    name = next(n for n in stock_tensors(str(out)) if "conv2d_6" in n and n.endswith("kernel:0"))
    dense, pruned = stock_tensors(real["fer"])[name].reshape(64, 128), stock_tensors(str(out))[name].reshape(64, 128)
    scores = np.abs(dense) * norms[:, None]
    expected = np.zeros_like(dense, dtype=bool)
    for column in range(128):
        expected[np.argsort(scores[:, column])[:32], column] = True
    assert np.array_equal(pruned == 0, expected)
    assert np.array_equal(pruned[~expected], dense[~expected])
    # Not magnitude pruning: the input norms change which weights go.
    magnitude = np.zeros_like(expected)
    for column in range(128):
        magnitude[np.argsort(np.abs(dense[:, column]))[:32], column] = True
    assert not np.array_equal(expected, magnitude)


def test_wanda_keeps_more_than_magnitude_at_equal_sparsity(real, faces, calibration, tmp_path):
    figures = {method: sparsified_figures(real["fer"], faces["data"], tmp_path / f"{method}.hdf5", "--method", method,
                                          "--sparsity", "0.5", *extra)
               for method, extra in (("wanda", ["--data", calibration]), ("relative", []))}
    # Measured with 60 faces calibrating: cosine 0.90 (wanda) against 0.81 (relative) on the 101.
    assert figures["wanda"]["cosine"] > figures["relative"]["cosine"] + 0.03


def test_wanda_takes_per_layer_sparsities(real, calibration, tmp_path):
    summary = run_json("sparsify", real["fer"], "--method", "wanda", "--sparsity", "0.25", "--layer", "conv2d_6=0.75",
                       "--data", calibration, "-o", tmp_path / "w.hdf5")["sparsify"]
    by_layer = {name.split("/")[1]: value for name, value in summary["sparsity"].items()}
    assert by_layer["conv2d_6"] == 0.75  # 48 of the 64 inputs of each output channel
    assert {v for k, v in by_layer.items() if k != "conv2d_6"} <= {0.25, 2 / 9, 0.1875}  # ⌊δ·rows⌋ / rows


def test_wanda_refusals(real, calibration, tmp_path):
    assert "--data CALIB.npz" in run_error("sparsify", real["fer"], "--method", "wanda", "--sparsity", "0.5",
                                           "-o", tmp_path / "a.hdf5")
    assert "--data and --groups" in run_error("sparsify", real["fer"], "--method", "relative", "--sparsity", "0.5",
                                              "--data", calibration, "-o", tmp_path / "b.hdf5")
    assert "not --dconv" in run_error("sparsify", real["fer"], "--method", "wanda", "--dconv", "0.1", "--data",
                                      calibration, "-o", tmp_path / "c.hdf5")
    assert not list(tmp_path.iterdir())


def test_sparsegpt_reconstructs_a_dense_layer_better_than_magnitude(mhc, tmp_path):
    import keras

    calibration = tmp_path / "calib.npz"
    with np.load(mhc["data"]) as data:
        np.savez(calibration, x=data["x"][:300])
    outputs = {}
    for method, extra in (("sparsegpt", ["--data", calibration]), ("relative", [])):
        outputs[method] = tmp_path / f"{method}.keras"
        result = run_json("sparsify", mhc["ba"], "--method", method, "--sparsity", "0.5", "--min-size", "0", "-o",
                          outputs[method], *extra)
    assert result["sparsify"]["method"] == "relative"
    model = keras.models.load_model(mhc["ba"])
    dense_layer = next(layer for layer in model.layers if type(layer).__name__ == "Dense"
                       and tuple(layer.kernel.shape) == (64, 64))
    x = keras.Model(model.inputs, dense_layer.input).predict(np.load(calibration)["x"], verbose=0).astype(np.float64)
    w = dense_layer.kernel.numpy().astype(np.float64)

    def pruned(method):
        return next(layer for layer in keras.models.load_model(outputs[method]).layers
                    if layer.name == dense_layer.name).kernel.numpy().astype(np.float64)

    sparse, magnitude = pruned("sparsegpt"), pruned("relative")
    assert (sparse == 0).mean() >= 0.5 and (magnitude == 0).mean() >= 0.5
    error = np.linalg.norm(x @ w - x @ sparse)
    assert error < 0.8 * np.linalg.norm(x @ w - x @ magnitude)


def test_sweep_and_autotune_take_calibrated_methods(real, faces, calibration, tmp_path):
    held = tmp_path / "held.npz"
    np.savez(held, x=np.load(faces["data"])["x"][40:])
    result = run_json("sweep", real["fer"], "--data", held, "--methods", "wanda,sparsegpt", "--deltas", "0.3",
                      "--calibration", calibration)
    rows = {r["method"]: r for r in result["rows"]}
    out = tmp_path / "w.hdf5"
    run_cli("sparsify", real["fer"], "--method", "wanda", "--sparsity", "0.3", "--data", calibration, "-o", out)
    written = {r["metric"]: r["value"] for r in run_json("evaluate", out, "--data", held, "--reference", real["fer"],
                                                         "--metric", "fidelity")["results"]}
    assert rows["wanda"]["value"] == written["fidelity"]  # in memory = the file sparsify writes
    tuned = run_json("autotune", real["fer"], "--data", held, "--max-drop", "0.2", "--holdout", "0", "--methods",
                     "sparsegpt", "--calibration", calibration, "-o", tmp_path / "t.hdf5")
    assert tuned["tuned"]["method"] == "sparsegpt" and tuned["plan"] is None and tuned["tuned"]["sparsity"] > 0.1
    layers = tuned["tuned"]["layers"]  # per-layer δ searched too (--layer overrides of the uniform start)
    assert len(layers) >= 8 and len({round(v, 2) for v in layers.values()}) > 1
    assert "--calibration" in run_error("sweep", real["fer"], "--data", held, "--methods", "wanda")


def test_recurrent_capture_matches_an_lstm_run_from_its_equations(mhc, tmp_path):
    """The LSTM's kernel sees x_t and its recurrent kernel h_(t-1), on the steps the Masking layer lets through
    (mhcnuggets pads peptides with -4.2e6): H from a numpy LSTM written from Keras's equations."""
    import keras
    from conftest import MHC_MASK

    from wcompress.runtime.capture import input_hessians

    x = np.load(mhc["data"])["x"][:37]
    data = tmp_path / "x.npz"
    np.savez(data, x=x)
    hessians = input_hessians(mhc["ba"], str(data), batch_size=8)
    lstm = next(layer for layer in keras.models.load_model(mhc["ba"]).layers if type(layer).__name__ == "LSTM")
    kernel, recurrent, bias = (w.astype(np.float64) for w in lstm.get_weights())
    units = recurrent.shape[0]

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    h, c = np.zeros((len(x), units)), np.zeros((len(x), units))
    inputs, states = [], []
    np.seterr(over="ignore")  # padded steps overflow exp; their results are discarded
    for t in range(x.shape[1]):
        step = x[:, t].astype(np.float64)
        active = np.any(step != MHC_MASK, axis=1)
        inputs.append(step[active])
        states.append(h[active])
        i, f, g, o = np.split(step @ kernel + h @ recurrent + bias, 4, axis=1)
        c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h_new = sigmoid(o) * np.tanh(c_new)
        h, c = np.where(active[:, None], h_new, h), np.where(active[:, None], c_new, c)
    rows_x, rows_h = np.concatenate(inputs), np.concatenate(states)
    assert 0 < len(rows_x) < x.shape[0] * x.shape[1]  # some steps are padding
    np.testing.assert_allclose(hessians["layers/lstm/cell/vars/0"], rows_x.T @ rows_x / len(rows_x), rtol=1e-4,
                               atol=1e-7)
    np.testing.assert_allclose(hessians["layers/lstm/cell/vars/1"], rows_h.T @ rows_h / len(rows_h), rtol=1e-4,
                               atol=1e-6)
