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
    assert wcompress.report(container, gzip=False)["container_version"] == 5


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
