"""bfloat16 models as Keras 3 and TensorFlow save them: Keras stores a bfloat16 variable in HDF5 as a 2-byte
opaque type with the attribute dtype="bfloat16", a TF2 checkpoint as DT_BFLOAT16. profile shows their
roles and exact statistics, sparsify zeroes them in their own dtype, the container restores them bit for
bit (and codes their values near their entropy), int8 codes dequantize back to bfloat16; stock Keras and
TensorFlow load every output. Figures are checked against computations written here from the definitions,
on the values widened to float64."""

import os

import ml_dtypes
import numpy as np
import pytest
from helpers import run_cli, run_error, run_json

import wcompress

BF16 = np.dtype(ml_dtypes.bfloat16)


@pytest.fixture(scope="module")
def bf16(tmp_path_factory):
    import keras
    import tensorflow as tf

    root = tmp_path_factory.mktemp("bf16")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(16, 3, dtype="bfloat16", name="conv")(inputs)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(64, activation="relu", dtype="bfloat16", name="hidden")(h)
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(h))
    paths = {"keras": str(root / "bf16.keras"), "weights_h5": str(root / "bf16.weights.h5")}
    model.save(paths["keras"])
    model.save_weights(paths["weights_h5"])
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        inputs = keras.Input((32,))
        h = keras.layers.Dense(64, activation="relu", name="m1")(inputs)
        mixed = keras.Model(inputs, keras.layers.Dense(4, dtype="float32", name="m2")(h))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    paths["mixed"] = str(root / "mixed.keras")
    mixed.save(paths["mixed"])
    checkpoint = tf.train.Checkpoint(dense=tf.Module())
    checkpoint.dense.kernel = tf.Variable(tf.cast(tf.random.normal((64, 32), seed=1) * 0.1, tf.bfloat16))
    checkpoint.dense.bias = tf.Variable(tf.zeros((32,), tf.bfloat16))
    paths["tf2"] = checkpoint.write(str(root / "tf2" / "ckpt"))
    paths["x"] = np.random.default_rng(0).random((6, 8, 8, 3), dtype=np.float32)
    return paths


def keras_weights(path):
    """name -> array of a Keras file's variables, loaded by stock Keras."""
    import keras

    return {w.path: np.asarray(w.numpy()) for w in keras.models.load_model(path, compile=False).weights}


def bits(array):
    return array.view(np.uint16) if array.dtype == BF16 else array


def test_profile_gives_bfloat16_kernels_their_roles_and_exact_statistics(bf16):
    import keras

    model = keras.models.load_model(bf16["keras"], compile=False)
    kernel = np.asarray(model.get_layer("hidden").kernel.numpy())
    rows = {r["name"]: r for r in run_json("profile", bf16["keras"])["tensors"]}
    (row,) = [r for r in rows.values() if r["layer"] == "hidden" and r["role"] == "kernel"]
    wide = kernel.astype(np.float64)
    assert row["dtype"] == "bfloat16" and row["bytes"] == kernel.size * 2
    assert row["min"] == wide.min() and row["max"] == wide.max()
    assert row["std"] == pytest.approx(wide.std(), rel=1e-12)
    assert {r["role"] for r in rows.values() if r["layer"] == "conv"} == {"kernel", "bias"}
    checkpoint = {r["name"]: r for r in run_json("profile", bf16["tf2"])["tensors"]}
    assert checkpoint["dense/kernel/.ATTRIBUTES/VARIABLE_VALUE"]["role"] == "kernel"
    assert checkpoint["dense/kernel/.ATTRIBUTES/VARIABLE_VALUE"]["std"] > 0


@pytest.mark.parametrize("source", ["keras", "weights_h5"])
def test_sparsify_zeroes_half_of_each_bfloat16_kernel_in_its_own_dtype(bf16, tmp_path, source):
    suffix = ".keras" if source == "keras" else ".weights.h5"
    out = tmp_path / ("sparse" + suffix)
    run_cli("sparsify", bf16[source], "--method", "relative", "--delta", "0.5", "--min-size", "0", "-o", out)
    if source == "keras":
        before, after = keras_weights(bf16["keras"]), keras_weights(out)
    else:
        from helpers import stock_tensors

        before, after = stock_tensors(bf16[source]), stock_tensors(out)
        before = {k: v.view(BF16) if v.dtype.kind == "V" else v for k, v in before.items()}
        after = {k: v.view(BF16) if v.dtype.kind == "V" else v for k, v in after.items()}
    kernels = [k for k, v in before.items() if v.dtype == BF16 and v.ndim >= 2]
    assert len(kernels) == 2
    for name in kernels:
        old, new = before[name], after[name]
        assert new.dtype == BF16
        zeros = new == 0
        # The δ-quantile of |w|: at least half of the weights, and every weight not zeroed is unchanged.
        assert 0.5 <= zeros.mean() <= 0.5 + 2 / old.size + np.mean(np.abs(old) == np.median(np.abs(old)))
        assert np.array_equal(bits(new)[~zeros], bits(old)[~zeros])
        assert np.abs(old[zeros].astype(np.float32)).max() <= np.abs(old[~zeros].astype(np.float32)).min()


@pytest.mark.parametrize("source", ["keras", "weights_h5", "mixed", "tf2"])
def test_pack_restore_is_bit_exact_in_the_original_dtype(bf16, tmp_path, source):
    from helpers import stock_tensors

    container = tmp_path / "c.h5"
    run_cli("pack", bf16[source], "-o", container)
    restored = wcompress.restore(container, output=tmp_path / ("r" + {"keras": ".keras", "mixed": ".keras",
                                                                       "weights_h5": ".weights.h5"}.get(source, ""))
                                 if source != "tf2" else tmp_path / "r" / "ckpt").output
    before, after = stock_tensors(bf16[source]), stock_tensors(restored)
    assert sorted(before) == sorted(after)
    for name in before:
        assert before[name].dtype == after[name].dtype and np.array_equal(before[name], after[name]), name
    if source in ("keras", "mixed"):
        for name, value in keras_weights(restored).items():
            assert np.array_equal(bits(value), bits(keras_weights(bf16[source])[name]))


def test_bfloat16_values_are_coded_near_their_entropy(bf16, tmp_path):
    container = tmp_path / "c.h5"
    run_cli("pack", bf16["keras"], "-o", container)
    report = {r["name"]: r for r in run_json("report", container)["tensors"]}
    before = keras_weights(bf16["keras"])
    kernel = next(v for v in before.values() if v.dtype == BF16 and v.ndim == 2)
    _, counts = np.unique(kernel.view(np.uint16), return_counts=True)
    entropy_bytes = -(counts * np.log2(counts / kernel.size)).sum() / 8
    (row,) = [r for r in report.values() if r["dtype"] == "bfloat16" and r["shape"] == list(kernel.shape)]
    assert row["entropy_bound_bytes"] == pytest.approx(entropy_bytes, rel=1e-9)
    # a dense kernel: the stored bytes are its value stream, within 5% of its order-0 entropy
    assert row["encoding"] == "dense" and row["stored_bytes"] <= 1.05 * entropy_bytes + 64
    assert row["stored_bytes"] < 0.8 * kernel.nbytes


def test_int8_codes_of_bfloat16_kernels_restore_as_bfloat16(bf16, tmp_path):
    container = tmp_path / "c.h5"
    run_cli("pack", bf16["keras"], "--values", "int8", "-o", container)
    restored = keras_weights(wcompress.restore(container, output=tmp_path / "r.keras").output)
    for name, value in keras_weights(bf16["keras"]).items():
        assert restored[name].dtype == value.dtype
        if value.dtype == BF16 and value.ndim >= 2:
            wide = value.astype(np.float32).reshape(-1, value.shape[-1])
            scale = np.where(np.abs(wide).max(axis=0) > 0, np.abs(wide).max(axis=0) / 127, 1).astype(np.float32)
            expected = (np.clip(np.rint(wide / scale), -127, 127) * scale).astype(BF16).reshape(value.shape)
            assert np.array_equal(bits(restored[name]), bits(expected)), name


def test_fp16_casts_bfloat16_where_the_values_fit_and_refuses_where_they_overflow(bf16, tmp_path):
    message = run_error("fp16", bf16["tf2"], "--tensors", "*", "-o", tmp_path / "f" / "ckpt")
    assert "a TF2 object checkpoint restores only into variables of its stored dtype" in message
    out = tmp_path / "f.keras"
    result = run_json("fp16", bf16["keras"], "--tensors", "*hidden*", "-o", out)
    before, after = keras_weights(bf16["keras"]), keras_weights(out)
    for name, value in before.items():
        if name.startswith("hidden"):
            # bfloat16 has fewer mantissa bits: a value within float16's normal range converts exactly.
            wide = value.astype(np.float32)
            normal = np.abs(wide) >= np.finfo(np.float16).tiny
            assert after[name].dtype == np.float16
            assert np.array_equal(after[name].astype(np.float32)[normal], wide[normal])
            changed = int(np.count_nonzero(after[name].astype(np.float32) != wide))
            assert result["passes"]["fp16"]["bfloat16_values_changed"].get(name, 0) == changed
        else:
            assert after[name].dtype == value.dtype and np.array_equal(bits(after[name]), bits(value))

    import keras

    big = keras.models.load_model(bf16["keras"])
    kernel = np.asarray(big.get_layer("hidden").kernel.numpy()).astype(np.float32)
    kernel[0, :3] = [1e5, -2e6, 7.0]
    big.get_layer("hidden").kernel.assign(kernel.astype(BF16))
    big.save(tmp_path / "big.keras")
    message = run_error("fp16", tmp_path / "big.keras", "--tensors", "*hidden*", "-o", tmp_path / "refused.keras")
    assert "hidden kernel (layers/dense/vars/0) holds 2 bfloat16 values beyond float16's range" in message
    assert "--on-overflow clip" in message and not os.path.exists(tmp_path / "refused.keras")
    run_cli("fp16", tmp_path / "big.keras", "--tensors", "*hidden*", "--on-overflow", "clip", "-o",
            tmp_path / "clipped.keras")
    clipped = keras_weights(tmp_path / "clipped.keras")["hidden/kernel"]
    assert clipped.dtype == np.float16 and clipped[0, 0] == 65504 and clipped[0, 1] == -65504 and clipped[0, 2] == 7



def stock_values(kind, path, like=None):
    """name -> array of an output, read by stock Keras or TensorFlow only."""
    import keras
    import tensorflow as tf

    if kind == "tf2":
        reader = tf.train.load_checkpoint(path)
        return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if k.startswith("dense/")}
    if path.endswith(".weights.h5"):
        model = keras.models.load_model(like, compile=False)
        model.load_weights(path)
    else:
        model = keras.models.load_model(path, compile=False)
    return {w.path: np.asarray(w.numpy()) for w in model.weights}


@pytest.mark.parametrize("command", ["strip", "sparsify", "fp16", "restore", "average"])
@pytest.mark.parametrize("key,form", [("keras", "out.keras"), ("keras", "out.h5"), ("keras", "out.weights.h5"),
                                      ("mixed", "out.keras"), ("mixed", "out.h5"), ("tf2", "dir/")])
def test_bfloat16_matrix_outputs_load_stock_with_the_expected_values(bf16, tmp_path, key, command, form):
    kind = "tf2" if key == "tf2" else "keras"
    source = bf16[key]
    args = {"strip": ["strip", source], "sparsify": ["sparsify", source, "--method", "relative", "--delta", "0.5", "--min-size", "0"],
            "fp16": ["fp16", source, "--tensors", "*"], "average": ["average", source, source]}.get(command)
    if command == "restore":
        run_cli("pack", source, "-o", tmp_path / "packed.h5")
        args = ["restore", tmp_path / "packed.h5"]
    out = tmp_path / "out"
    out.mkdir()
    target = str(out / form) if form != "dir/" else str(out) + os.sep
    if command == "fp16" and kind == "tf2":
        assert "restores only into variables of its stored dtype" in run_error(*args, "-o", target)
        assert os.listdir(out) == []
        return
    if form == "out.h5" and key == "keras" and command != "fp16":
        # Keras's legacy loader cannot read back the bfloat16 it writes there: refused, nothing written.
        assert "Keras cannot load bfloat16 weights from a legacy .h5 file" in run_error(*args, "-o", target)
        assert os.listdir(out) == []
        return
    run_cli(*args, "-o", target)
    written = target if form != "dir/" else str(out / "ckpt")
    before = stock_values(kind, source if kind == "tf2" else bf16[key], like=source)
    if kind == "tf2":
        before = {k: v for k, v in before.items()}
    after = stock_values(kind, written, like=source)
    assert sorted(after) == sorted(before)
    for name, value in before.items():
        got = after[name]
        if command in ("strip", "restore", "average"):
            assert got.dtype == value.dtype and np.array_equal(bits(got), bits(value)), name
        elif command == "sparsify":
            assert got.dtype == value.dtype, name
            if value.ndim >= 2 and value.size >= 64:
                assert np.mean(got == 0) >= 0.45, name
        else:  # fp16: every float tensor becomes float16, each value as float16 rounds it
            # (a .weights.h5 loads into the user's model, whose layers keep their own dtype)
            assert got.dtype == (value.dtype if form == "out.weights.h5" else np.float16), name
            expected = value.astype(np.float32).astype(np.float16).astype(got.dtype)
            assert np.array_equal(bits(got), bits(expected)), name


@pytest.mark.parametrize("key", ["keras", "mixed"])
def test_evaluate_and_compress_run_bfloat16_models_and_keep_their_dtypes(bf16, tmp_path, key):
    """Running a bfloat16 (or mixed_bfloat16) model end to end: evaluate measures it, compress judges its
    file on held-out examples, and the .keras it writes keeps every variable's dtype."""
    import keras

    from wcompress.workflows.metrics import agreement
    from wcompress.workflows.scoring import split_examples

    shape = (8, 8, 3) if key == "keras" else (32,)
    x = np.random.default_rng(2).random((200, *shape), dtype=np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    fidelity = run_json("evaluate", bf16[key], "--reference", bf16[key], "--data", tmp_path / "x.npz")
    assert fidelity["results"][0]["value"] == 1.0 and fidelity["examples"] == 200
    out = tmp_path / "small.keras"
    document = wcompress.compress(bf16[key], x, 0.05, output=out, max_evals=10).to_dict()
    assert document["output_bytes"] == os.path.getsize(out)
    before, after = keras_weights(bf16[key]), keras_weights(out)
    assert {k: v.dtype for k, v in after.items()} == {k: v.dtype for k, v in before.items()}
    _, held = split_examples(len(x), 0.3)
    dense = keras.models.load_model(bf16[key], compile=False).predict(x[held], verbose=0)
    ours = keras.models.load_model(out, compile=False).predict(x[held], verbose=0)
    assert agreement(dense, ours) == pytest.approx(document["tuned"]["held_out_value"]) and \
        document["tuned"]["held_out_value"] >= 0.95
