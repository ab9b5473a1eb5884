"""Models that are already quantized, as users have them: Keras's `model.quantize("int8")` / ("int4") output
and our own TF1 int8 graphs. profile and report name their integer codes "quantized kernel" and what
dequantizes them "scale", with bits per weight; pack keeps them bit for bit; sparsify, fp16 and quantize
leave them alone and say so, or refuse in one line when nothing else is left."""

import os

import numpy as np
import pytest
from helpers import run_cli, run_error, run_json

import wcompress


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A float Keras model and its Keras int8 and int4 forms, in .keras and .weights.h5."""
    import keras

    root = tmp_path_factory.mktemp("quantized")
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(24, activation="relu", name="hidden")(h)
    h = keras.layers.Dense(5, use_bias=False, name="head")(h)
    model = keras.Model(inputs, h)
    paths = {"float": str(root / "float.keras"), "x": np.random.default_rng(1).random((4, 6, 6, 2), np.float32)}
    model.save(paths["float"])
    for mode in ("int8", "int4"):
        copy = keras.models.load_model(paths["float"])
        copy.quantize(mode)
        paths[mode] = str(root / f"{mode}.keras")
        copy.save(paths[mode])
        paths[mode + "_weights"] = str(root / f"{mode}.weights.h5")
        copy.save_weights(paths[mode + "_weights"])
    return paths


def layer_roles(profile):
    roles = {}
    for row in profile["tensors"]:
        roles.setdefault(row["layer"], []).append(row["role"])
    return roles


@pytest.mark.parametrize("kind", ["int8", "int8_weights", "int4", "int4_weights"])
def test_profile_names_codes_and_scales_and_counts_bits_per_weight(quantized, kind):
    import keras

    profile = run_json("profile", quantized[kind], "--json")
    roles = layer_roles(profile)
    assert roles["conv"] == ["kernel", "bias"]
    extra = ["scale"] if kind.startswith("int8") else ["scale", "scale", "scale"]  # int4: scale, zero, g_idx
    assert roles["hidden"] == ["quantized kernel", "bias"] + extra
    assert roles["head"] == ["quantized kernel"] + extra  # no bias: the parity of the count says so
    model = keras.models.load_model(quantized[kind.split("_")[0]])
    by_layer = {q["layer"]: q for q in profile["quantized_layers"]}
    assert sorted(by_layer) == ["head", "hidden"]
    for name, q in by_layer.items():
        layer = model.get_layer(name)
        weights = int(np.prod(layer.kernel.shape))  # the dequantized kernel's shape: the weights it stands for
        stored = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in layer.weights
                     if not w.path.endswith("bias"))
        assert q["code_bits"] == (8 if kind.startswith("int8") else 4)
        assert q["weights"] == weights and q["bytes"] == stored
        assert q["bits_per_weight"] == pytest.approx(8 * stored / weights)


def test_pack_keeps_quantized_layers_bit_for_bit_and_report_counts_them(quantized, tmp_path):
    import keras

    for mode in ("int8", "int4"):
        container = tmp_path / f"{mode}.h5"
        # --values int8 quantizes the float conv kernel, never the codes or scales already there.
        run_cli("pack", quantized[mode], "--values", "float16", "-o", container)
        restored = keras.models.load_model(wcompress.restore(container, output=tmp_path / f"{mode}.keras").output)
        original = keras.models.load_model(quantized[mode])
        for a, b in zip(original.weights, restored.weights):
            assert a.path == b.path and a.dtype == b.dtype
            if "conv" not in a.path:
                assert np.array_equal(np.asarray(a.numpy()), np.asarray(b.numpy())), a.path
        report = run_json("report", container, "--json")
        by_layer = {q["layer"]: q for q in report["quantized_layers"]}
        assert sorted(by_layer) == ["head", "hidden"]
        rows = {r["name"]: r for r in report["tensors"]}
        codes = [r for r in rows.values() if r["role"] == "quantized kernel"]
        assert all(r["value_dtype"] == "int8" and r["encoding"] in ("dense", "coo", "bitmap") for r in codes)
        for name, q in by_layer.items():
            assert q["stored_bytes"] == sum(r["stored_bytes"] for r in rows.values()
                                            if r["layer"] == name and r["role"] in ("quantized kernel", "scale"))


def test_sparsify_and_fp16_leave_quantized_layers_alone_and_say_so(quantized, tmp_path):
    import keras

    for command, args in (("sparsify", ["--method", "relative", "--delta", "0.5"]), ("fp16", [])):
        out = tmp_path / f"{command}.keras"
        result = run_json(command, quantized["int8"], *args, "-o", out, "--json")
        assert any("left alone: 2 already-quantized layers" in w and "(hidden, head" in w
                   for w in result["warnings"]), result["warnings"]
        before = keras.models.load_model(quantized["int8"])
        after = keras.models.load_model(out)
        for name in ("hidden", "head"):
            assert after.get_layer(name).dtype_policy.name == before.get_layer(name).dtype_policy.name
            for a, b in zip(before.get_layer(name).weights, after.get_layer(name).weights):
                assert np.array_equal(np.asarray(a.numpy()), np.asarray(b.numpy()))
        assert np.asarray(after.get_layer("conv").kernel.numpy()).dtype == (
            np.float16 if command == "fp16" else np.float32)


def test_quantize_refuses_an_already_quantized_model(quantized, tmp_path):
    message = run_error("quantize", quantized["int8"], "-o", tmp_path / "again.keras")
    assert message.startswith(f"wcompress: error: {quantized['int8']}: already quantized: hidden, head hold "
                              "integer codes")
    assert os.listdir(tmp_path) == []


def test_our_tf1_int8_graph_is_recognised_and_refused_where_it_must(real, tmp_path):
    out = str(tmp_path / "int8") + os.sep
    run_cli("quantize", real["musicnn"], "-o", out)
    profile = run_json("profile", out, "--json")
    codes = [r for r in profile["tensors"] if r["role"] == "quantized kernel"]
    assert codes and all(r["dtype"] == "int8" for r in codes)
    assert {q["layer"] for q in profile["quantized_layers"]} == {r["layer"] for r in codes}
    assert all(q["code_bits"] == 8 for q in profile["quantized_layers"])
    message = run_error("sparsify", out, "--method", "relative", "--delta", "0.3", "-o", tmp_path / "s" / "")
    assert "every kernel is already quantized" in message
    message = run_error("quantize", out, "-o", tmp_path / "q" / "")
    assert "already quantized: every kernel holds integer codes" in message
    assert sorted(os.listdir(tmp_path)) == ["int8"]
