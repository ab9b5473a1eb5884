"""Fitting the float vectors of a model whose kernels are rounded to the dense model's outputs
(runtime/fitting.py), and the output-error gradients it descends, checked against their definition."""

import numpy as np
import pytest

from wcompress.formats.container.quantization import calibrated_source, ecq_unit, restored_values
from wcompress.runtime import fitting

from helpers import musicnn_feed, run_cli, run_json


def test_keras_output_error_gradient_of_a_linear_head_follows_its_definition(tiny):
    """out = h W + b: d mean((out - r)^2) / db = 2 sum_n (out - r) / (N K), and h' (2 (out - r) / (N K)) for W."""
    import keras

    from wcompress.runtime.predictors import load_predictor

    predictor = load_predictor(tiny["keras"])
    try:
        model = predictor.model
        head = model.get_layer("head")
        handles = [next(i for i, v in enumerate(model.weights) if v is w) for w in (head.kernel, head.bias)]
        reference = np.random.default_rng(3).random((64, 3)).astype(np.float32)
        kernel, bias = predictor.output_error_gradients(handles)(predictor.match({"x": tiny["x"]}), reference)
        hidden = keras.Model(model.inputs, model.get_layer("hidden2").output).predict(tiny["x"], verbose=0)
        out = model.predict(tiny["x"], verbose=0).astype(np.float64)
    finally:
        predictor.close()
    residual = 2 * (out - reference) / out.size
    assert np.allclose(bias, residual.sum(axis=0), rtol=1e-4, atol=1e-7)
    assert np.allclose(kernel, hidden.astype(np.float64).T @ residual, rtol=1e-4, atol=1e-7)


def test_tf1_output_error_gradient_follows_its_definition(tiny):
    """sigmoid(a w2 + b2), a = relu(x w1 + b1): d mean((s - r)^2) / d b2 = sum_n 2 (s - r) s (1 - s) / (N K)."""
    from wcompress.formats import open_model
    from wcompress.runtime.capture import match_by_content
    from wcompress.runtime.predictors import load_predictor

    store = open_model(tiny["tf1"])
    w1, b1, w2, b2 = (store.load(n).astype(np.float64) for n in ("fc1/kernel", "fc1/bias", "fc2/kernel", "fc2/bias"))
    x = np.random.default_rng(5).random((40, 10)).astype(np.float32)
    reference = np.random.default_rng(6).random((40, 4)).astype(np.float32)
    predictor = load_predictor(tiny["tf1"])
    try:
        handles = match_by_content(store, predictor.weights())
        grads = predictor.output_error_gradients([handles["fc2/bias"], handles["fc2/kernel"]])(
            predictor.match({"x": x}), reference)
    finally:
        predictor.close()
    a = np.maximum(x @ w1 + b1, 0)
    s = 1 / (1 + np.exp(-(a @ w2 + b2)))
    delta = 2 * (s - reference) * s * (1 - s) / s.size
    assert np.allclose(grads[0], delta.sum(axis=0), rtol=1e-4, atol=1e-8)
    assert np.allclose(grads[1], a.T @ delta, rtol=1e-4, atol=1e-8)


def _coarse(tiny):
    """The tiny Keras model with its kernels at a coarse ecq step, and its dense vectors and outputs."""
    from wcompress.formats import open_model
    from wcompress.runtime.capture import _float_vectors, match_by_content
    from wcompress.runtime.predictors import load_predictor

    store = open_model(tiny["keras"])
    predictor = load_predictor(tiny["keras"])
    reference = predictor.predict({"x": tiny["x"]})
    handles = match_by_content(store, predictor.weights())
    for name, handle in handles.items():
        array = store.load(name)
        if array.ndim == 2:
            predictor.assign(handle, restored_values(array, "ecq:12"))
    return predictor, _float_vectors(store, handles), reference


def test_fitted_vectors_lower_the_kept_out_error_and_are_the_same_each_time(tiny):
    runs = []
    for _ in range(2):
        predictor, vectors, reference = _coarse(tiny)
        try:
            fitted, fit = fitting.fit_vectors(predictor, vectors, {"x": tiny["x"]}, reference)
            held = {n: np.asarray(predictor.model.weights[vectors[n][0]].numpy()) for n in fitted}
        finally:
            predictor.close()
        runs.append(fitted)
        assert fit.kept_out == round(fitting.KEPT_OUT_SHARE * 64) and fit.fitted_on == 64 - fit.kept_out
        assert fit.step > 0 and fit.error_after < fit.error_before
        assert set(fitted) == set(vectors) and any(not np.array_equal(fitted[n], vectors[n][1]) for n in fitted)
        assert all(np.array_equal(held[n], fitted[n]) for n in fitted)  # the predictor is left with them
        positive = [n for n in fitted if vectors[n][1].min() > 0]  # the moving variance at least
        assert positive and all(fitted[n].min() >= 0 for n in positive)
    assert all(np.array_equal(runs[0][n], runs[1][n]) for n in runs[0])


def test_too_few_examples_fit_nothing(tiny):
    predictor, vectors, reference = _coarse(tiny)
    try:
        few = fitting.MIN_EXAMPLES - 1
        assert fitting.fit_vectors(predictor, vectors, {"x": tiny["x"][:few]}, reference[:few]) == ({}, None)
    finally:
        predictor.close()


def test_packed_ecq_stores_the_fitted_vectors_and_restores_them(tiny, tmp_path):
    """pack --values ecq --data: the container's vectors are the fitted ones at ecq's step (what the evaluation
    of that setting uses, variants.with_values); int8 keeps the model's own vectors."""
    from wcompress.formats import open_model
    from wcompress.runtime.capture import input_hessians
    from wcompress.workflows.variants import with_values

    data = tmp_path / "calib.npz"
    np.savez(data, x=tiny["x"])
    container = tmp_path / "c.h5"
    shown = run_cli("pack", tiny["keras"], "--values", "ecq", "--qp", "4", "--data", data, "-o", container)
    calibration = input_hessians(tiny["keras"], str(data), sensitivity=True, values="ecq:4")
    assert calibration.vectors and calibration.fit.step > 0
    fit = calibration.fit.to_dict()
    assert (f"vectors: {fit['vectors']} fitted to the dense model's outputs on {fit['fitted_on']} examples, "
            f"{fit['kept_out']} kept out: kept-out output error {fit['error_before']:.3g} → "
            f"{fit['error_after']:.3g} (step {fit['step']})") in " ".join(shown.output.split())
    again = run_json("pack", tiny["keras"], "--values", "ecq", "--qp", "4", "--data", data, "-o", container,
                     "--force")
    assert again["passes"]["fitted_vectors"] == fit
    source, stored = open_model(tiny["keras"]), open_model(str(container))
    evaluated = with_values(source, {}, "ecq:4", calibration)
    for name in calibration.vectors:
        expected = restored_values(calibrated_source(calibration, name, source.load(name), "ecq:4"), "ecq:4",
                                   None, ecq_unit(calibration, name))
        assert np.array_equal(stored.load(name), expected) and np.array_equal(evaluated[name], expected)
    assert any(not np.array_equal(stored.load(n), restored_values(source.load(n), "ecq:4", None,
                                                                  ecq_unit(calibration, n)))
               for n in calibration.vectors)
    for name in calibration.vectors:
        assert calibrated_source(calibration, name, source.load(name), "int8") is not calibration.vectors[name]


@pytest.mark.parametrize("values", ["int8", None])
def test_only_ecq_fits_vectors(tiny, tmp_path, values):
    from wcompress.runtime.capture import input_hessians

    data = tmp_path / "calib.npz"
    np.savez(data, x=tiny["x"])
    assert input_hessians(tiny["keras"], str(data), sensitivity=True, values=values).vectors == {}


def _fold(path, examples, batch_norms=None):
    """fold_batch_norms on the model at `path`: (folded, the dense arrays, the output before and after),
    `batch_norms` replacing what the predictor finds where given."""
    from wcompress.formats import open_model
    from wcompress.runtime.capture import batch_norm_groups, fold_batch_norms, match_by_content
    from wcompress.runtime.predictors import load_predictor

    store = open_model(path)
    predictor = load_predictor(path)
    try:
        handles = match_by_content(store, predictor.weights())
        keys = {name: predictor.handle_key(handle) for name, handle in handles.items()}
        if batch_norms is not None:
            predictor.batch_norms = lambda: batch_norms(predictor)
        reference = predictor.predict(examples)
        folded = fold_batch_norms(predictor, handles, batch_norm_groups(predictor, store, keys), store.load, examples)
        after = predictor.predict(examples)
    finally:
        predictor.close()
    return folded, {name: store.load(name) for name in folded}, reference, after


def test_a_batch_norm_folds_into_a_scale_and_an_offset_with_the_same_output(tiny):
    """gamma' = gamma / sqrt(var + eps) sqrt(eps), beta' = beta - mean gamma / sqrt(var + eps), mean' = var' = 0:
    (x - 0) / sqrt(0 + eps) gamma' + beta' is the layer's output, computed from the definition."""
    folded, dense, reference, after = _fold(tiny["keras"], {"features": tiny["x"]})
    names = list(folded)  # the layer's gamma, beta, moving mean and variance (a .keras file numbers them)
    assert len(names) == 4
    gamma, beta, mean, variance = (dense[name].astype(np.float64) for name in names)
    eps = 1e-3  # Keras' default, the tiny model's
    assert not np.allclose(mean, 0) and not np.allclose(variance, 1)  # trained statistics
    assert np.allclose(folded[names[0]], gamma / np.sqrt(variance + eps) * np.sqrt(eps), rtol=1e-6)
    assert np.allclose(folded[names[1]], beta - mean * gamma / np.sqrt(variance + eps), rtol=1e-6, atol=1e-7)
    assert not folded[names[2]].any() and not folded[names[3]].any()
    assert np.allclose(after, reference, rtol=1e-5, atol=1e-6)


def test_a_batch_norm_whose_output_would_move_is_not_folded(tiny):
    """An epsilon other than the one the layer runs with (as a fused kernel's clamp would give) moves the
    output: nothing is folded, with a warning, and the model's own vectors are back."""
    def wrong_epsilon(predictor):
        return [(*group, epsilon * 100) for *group, epsilon in type(predictor).batch_norms(predictor)]

    with pytest.warns(UserWarning, match="batch norms kept unfolded"):
        folded, _, reference, after = _fold(tiny["keras"], {"features": tiny["x"]}, wrong_epsilon)
    assert folded == {}
    assert np.array_equal(after, reference)


def test_tf1_batch_norms_behind_an_is_training_cond_fold(real):
    """MTT_musicnn's tf.layers batch norms read their variables through the Switch of an is-training cond; the
    inference branch's batch norms fold, and the graph's output does not move. Eight of its nine: the first
    normalises one channel, and one-value tensors are never matched to variables (capture.match_by_content)."""
    from helpers import MUSICNN_IN

    folded, _, reference, after = _fold(real["musicnn"], {MUSICNN_IN: musicnn_feed(4)[MUSICNN_IN]})
    assert len(folded) == 32
    assert np.allclose(after, reference, rtol=1e-4, atol=1e-5)


def test_the_fit_line_says_folded_batch_norms_are_stored_folded_when_no_step_improved():
    from wcompress import render

    fit = {"vectors": 8, "step": 0, "fitted_on": 32, "kept_out": 8, "error_before": 0.5, "error_after": 0.5}
    with render.console.capture() as shown:
        render.fitted_vectors(fit)
        render.fitted_vectors({**fit, "batch_norms_folded": 2})
    lines = shown.get().splitlines()
    assert lines[0].endswith("the model's own are stored")
    assert lines[1] == "batch norms: 2 folded into a scale and an offset (their moving mean and variance stored " \
        "as zeros)"
    assert lines[2].endswith("the model's own are stored, folded")
