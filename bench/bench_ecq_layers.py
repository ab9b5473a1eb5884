"""Which kernel's precision the output needs: ecq's per-kernel ablation on real models.

Every tensor is set to what `pack --values ecq --qp LO --data <tuning part>` restores (steps, GPTQ and the
layer-by-layer statistics exactly as pack computes them), then each kernel in turn alone is moved to QP HI
(its step x 2^((HI - LO)/4)) and the model scored on the held-out and tuning parts, as bench_rd scores
them. A kernel whose move costs far more than the others' is one ecq's allocation (docs/methods.md,
"With --data, the output's own sensitivity moves the steps") gives too coarse a step.

Models: MTT_vgg (musicnn's VGG-style model, not a test fixture; bench_rd's music clips) by default, and any of
bench_rd's (fer, MTT_musicnn) by name. `python bench/bench_ecq_layers.py [MODEL ...] [--qp LO,HI]` (default
4,6) prints one JSON object per model: the score at LO everywhere and each kernel's score with it at HI,
worst first.
"""

import json
import os
import sys
import tempfile
import warnings

import bench_rd  # first: sets up sys.path and TensorFlow's environment as bench_rd runs it


def ablate(name, model, kind, tune, held, measure, work, low, high):
    from wcompress.formats import open_model
    from wcompress.formats.container.quantization import ecq_values, quantizable, restored_values
    from wcompress.runtime.capture import input_hessians, match_by_content
    from wcompress.runtime.data import load_data
    from wcompress.runtime.predictors import load_predictor

    dense = bench_rd.dense_copy(name, model, kind, work)
    calibration = load_data(bench_rd.inputs_only(work, name, tune))
    statistics = input_hessians(dense, calibration, sensitivity=True, values=ecq_values(low))
    store, predictor = open_model(dense), load_predictor(dense)
    try:
        handles = match_by_content(store, predictor.weights())
        originals = {tensor: store.load(tensor) for tensor in handles}  # read once: each is restored twice
        parts = {"held": load_data(held), "tune": load_data(tune)}
        reference = {part: predictor.predict(data) for part, data in parts.items()}

        def restored(tensor, qp):
            return restored_values(originals[tensor], ecq_values(qp), statistics.get(tensor),
                                   statistics.units.get(tensor))

        def score():
            return {part: round(float(measure(reference[part], predictor.predict(data), part)), 4)
                    for part, data in parts.items()}

        at_low = {tensor: restored(tensor, low) for tensor in handles}
        for tensor, values in at_low.items():
            predictor.assign(handles[tensor], values)
        result = {"model": name, "qp": [low, high], "all_at_low": score(), "one_kernel_at_high": []}
        for tensor in handles:
            if not quantizable(originals[tensor]):
                continue
            predictor.assign(handles[tensor], restored(tensor, high))
            result["one_kernel_at_high"].append({"tensor": tensor, **score()})
            predictor.assign(handles[tensor], at_low[tensor])
        result["one_kernel_at_high"].sort(key=lambda row: row["held"])
        return result
    finally:
        predictor.close()


def main():
    warnings.simplefilter("ignore")
    args = sys.argv[1:]
    low, high = 4, 6
    if "--qp" in args:
        at = args.index("--qp")
        low, high = (int(q) for q in args[at + 1].split(","))
        del args[at:at + 2]
    wanted = args or ["MTT_vgg"]
    with tempfile.TemporaryDirectory() as work:
        for model in [model for model in bench_rd.models(work, extra=wanted) if model[0] in wanted]:
            print(json.dumps(ablate(*model, work, low, high), indent=1), flush=True)


if __name__ == "__main__":
    main()
