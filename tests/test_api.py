"""The public Python API (wcompress/api.py) on real models, in memory and over paths: the CLI's --json is
exactly a result's to_dict(), an in-memory model comes back as a new keras.Model, and the caller's model
is never changed."""

import json
import warnings

import numpy as np
import pytest
from helpers import as_version_1, run_json

import wcompress
from wcompress import WcompressError, WcompressWarning


@pytest.fixture(scope="module")
def fer_model(real):
    import keras

    return keras.models.load_model(real["fer"], compile=False)


def _weights(model):
    return [w.copy() for w in model.get_weights()]


def test_sparsify_an_in_memory_model_returns_a_new_model(fer_model, faces):
    before = _weights(fer_model)
    result = wcompress.sparsify(fer_model, method="relative", delta=0.5)
    smaller = result.model
    assert smaller is not fer_model and type(smaller).__name__ in ("Functional", "Sequential", "Model")
    assert all(np.array_equal(a, b) for a, b in zip(before, fer_model.get_weights()))  # the caller's model
    # Each sparsified kernel is now half zeros (the relative rule zeroes the δ quantile of each layer's |w|).
    names = {o.name for o in result.outcomes if o.zeros > o.zeros_before}
    assert names and result.summary["method"] == "relative"
    kernels = [w for w in smaller.get_weights() if w.ndim >= 2 and w.size >= 1024]
    assert kernels and all(abs(np.mean(w == 0) - 0.5) < 0.01 for w in kernels)
    document = result.to_dict()
    assert document["output"] is None and document["output_files"] == [] and document["output_bytes"] > 0
    x = np.load(faces["data"])["x"][:4]
    assert smaller.predict(x, verbose=0).shape == fer_model.predict(x, verbose=0).shape


def test_a_path_gives_what_the_cli_prints(real, tmp_path):
    result = wcompress.strip(real["fer"], output=tmp_path / "api" / "fer.hdf5")
    cli = run_json("strip", real["fer"], "-o", tmp_path / "cli" / "fer.hdf5")
    document = json.loads(json.dumps(result.to_dict(), default=str))
    for key in ("format", "input_bytes", "output_bytes", "passes", "warnings"):
        assert document[key] == cli[key]
    assert document["output"].endswith("api/fer.hdf5") and result.model is None


def test_pack_with_calibration_arrays_then_restore(mhc, tmp_path):
    import keras

    model = keras.models.load_model(mhc["ba"], compile=False)
    with np.load(mhc["data"]) as data:
        x, y = data["x"][:200], data["y"][:200]
    with pytest.raises(WcompressError, match="needs output="):
        wcompress.pack(model, values="int4", data=x)
    container = tmp_path / "mhc.h5"
    packed = wcompress.pack(model, values="int4", data=(x, y), output=container)
    assert packed.to_dict()["output_bytes"] == container.stat().st_size
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        restored = wcompress.restore(container, output=tmp_path / "back.keras", load=True)
    assert any(issubclass(w.category, WcompressWarning) and "dequantized" in str(w.message) for w in seen)
    agreement = np.mean((restored.model.predict(x, verbose=0) > 0.5) == (model.predict(x, verbose=0) > 0.5))
    assert agreement > 0.9


def test_profile_and_report_take_models_and_paths(fer_model, real, tmp_path):
    in_memory = wcompress.profile(fer_model).to_dict()
    on_disk = wcompress.profile(real["fer"])
    kernels = [[t["shape"] for t in document["tensors"] if t["role"] == "kernel"] for document in (in_memory, on_disk)]
    assert kernels[0] == kernels[1] and len(kernels[0]) > 5  # the file also holds its optimizer's state
    container = tmp_path / "c.h5"
    wcompress.pack(real["fer"], output=container)
    assert wcompress.report(container, gzip=False)["container_version"] == 9  # its HDF5 skeleton is a tree in the index


def test_errors_and_warnings_reach_the_caller(real, tmp_path):
    with pytest.raises(WcompressError, match="a path or a keras.Model"):
        wcompress.sparsify(42, method="relative", delta=0.5)
    with pytest.raises(WcompressError, match="--method is required"):
        wcompress.sparsify(real["fer"])
    container = tmp_path / "c.h5"
    wcompress.pack(real["fer"], output=container, codec="none")
    as_version_1(container)
    with pytest.warns(WcompressWarning, match="carries no checksums"):
        wcompress.restore(container, output=tmp_path / "r.hdf5")


@pytest.fixture(scope="module")
def mhc_model(mhc):
    import keras

    return keras.models.load_model(mhc["ba"], compile=False)


@pytest.fixture(scope="module")
def peptides(mhc):
    with np.load(mhc["data"]) as data:
        return data["x"], data["y"]


def test_quantize_an_in_memory_keras_model(mhc_model, peptides):
    x, _ = peptides
    before = _weights(mhc_model)
    result = wcompress.quantize(mhc_model, bits=8, data=x[:200])
    summary = result.to_dict()["quantize"]
    assert summary["quantized_layers"] and summary["calibrated_layers"]
    assert result.to_dict()["output"] is None and result.to_dict()["input"] is None  # private files, gone
    assert any(w.dtype == np.int8 for w in result.model.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(before, mhc_model.get_weights()))
    ours, theirs = result.model.predict(x[200:400], verbose=0), mhc_model.predict(x[200:400], verbose=0)
    assert np.mean((ours > 0.5) == (theirs > 0.5)) > 0.95


def test_evaluate_takes_arrays_and_tuples(mhc_model, mhc, peptides):
    x, y = peptides
    in_memory = wcompress.evaluate(mhc_model, (x, y), metrics="auc")
    on_disk = run_json("evaluate", mhc["ba"], "--data", mhc["data"], "--metric", "auc")
    assert in_memory.values["auc"] == pytest.approx(on_disk["results"][0]["value"], abs=1e-6)
    assert in_memory.examples == on_disk["examples"] == len(x)
    assert in_memory.to_dict()["model"] is None
    with pytest.raises(WcompressError, match="data is required"):
        wcompress.evaluate(mhc_model, None, metrics="auc")
    # metric= as every other function spells it
    assert wcompress.evaluate(mhc_model, (x, y), metric="auc").values == in_memory.values


def test_autotune_in_memory_returns_the_tuned_model_and_its_plan(mhc_model, peptides):
    x, y = peptides
    before = _weights(mhc_model)
    result = wcompress.autotune(mhc_model, data=(x, y), metric="auc", max_drop=0.05, methods="relative",
                                max_layers=0)
    document = result.to_dict()
    assert document["tuned"]["within_budget"] and document["tuned"]["sparsity"] > 0.2
    assert document["output"] is None and document["plan"] is None and document["plan_document"]["thresholds"]
    assert "judged on 180 held out" in document["examples"]
    assert all(np.array_equal(a, b) for a, b in zip(before, mhc_model.get_weights()))
    kernels = [w for w in result.model.get_weights() if w.ndim >= 2 and w.size >= 1024]
    assert np.mean(np.concatenate([k.ravel() for k in kernels]) == 0) > 0.2
    # The held-out figure is the returned model's own, recomputed from the definition of AUC.
    from wcompress.workflows import split_examples

    _, held = split_examples(len(x), 0.3)
    scores = result.model.predict(x[held], verbose=0).ravel()
    positive, negative = scores[y[held] == 1], scores[y[held] == 0]
    pairs = positive[:, None] - negative[None, :]  # AUC: P(a binder scores above a non-binder), ties half
    auc = np.mean(pairs > 0) + 0.5 * np.mean(pairs == 0)
    assert auc == pytest.approx(document["tuned"]["held_out_value"], abs=1e-6)


def test_sweep_in_memory_equals_the_command(mhc_model, mhc, peptides, tmp_path):
    x, y = peptides
    rows = wcompress.sweep(mhc_model, (x, y), metric="auc", methods="relative", deltas="0.3,0.6").rows
    cli = run_json("sweep", mhc["ba"], "--data", mhc["data"], "--metric", "auc", "--methods", "relative",
                   "--deltas", "0.3,0.6")
    on_path = wcompress.sweep(mhc["ba"], mhc["data"], metric="auc", methods=["relative"], deltas={"relative": [0.3, 0.6]})
    assert json.loads(json.dumps(on_path.rows)) == cli["rows"]
    # In memory, the same figures; the container names the model it came from, so its bytes differ slightly.
    assert [(r["delta"], r["sparsity"], r["value"]) for r in rows] == \
        [(r["delta"], r["sparsity"], r["value"]) for r in cli["rows"]]


def test_fp16_merge_and_export_in_memory(mhc_model, peptides, tmp_path):
    import keras

    x, _ = peptides
    cast = wcompress.fp16(mhc_model)
    assert cast.to_dict()["passes"]["fp16"]["cast_tensors"] and cast.model is not mhc_model
    assert np.allclose(cast.model.predict(x[:50], verbose=0), mhc_model.predict(x[:50], verbose=0), atol=1e-2)
    merged = wcompress.merge([mhc_model, cast.model], weights=[0.5, 0.5])
    assert isinstance(merged.model, keras.Model) and merged.to_dict()["output"] is None
    assert merged.model.predict(x[:8], verbose=0).shape == mhc_model.predict(x[:8], verbose=0).shape
    # The converter cannot lower mhcnuggets' LSTM; the error names the model the caller gave, not our copy.
    with pytest.raises(WcompressError, match="^the in-memory model: the TFLite converter failed") as caught:
        wcompress.export(mhc_model, tmp_path / "mhc.tflite")
    assert "wcompress-api-" not in str(caught.value) and not (tmp_path / "mhc.tflite").exists()


def test_export_in_memory(fer_model, tmp_path):
    exported = wcompress.export(fer_model, tmp_path / "fer.tflite")
    assert exported["output_bytes"] == (tmp_path / "fer.tflite").stat().st_size
    assert exported["input"] is None


def test_the_package_names_stay_the_functions_after_use(mhc_model):
    """No module of the package shadows an API function once it is imported (`wcompress.merge` stays the
    function after the merge workflow has been loaded)."""
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(wcompress.__path__, "wcompress."):
        importlib.import_module(info.name)
    for name in wcompress.__all__:
        if name[0].islower():
            assert callable(getattr(wcompress, name)) and getattr(wcompress, name).__module__.startswith(
                "wcompress.api"), name
