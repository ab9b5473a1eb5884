"""A bounded fuzz run in every `make test` (`make fuzz` runs the long one): damaged copies of real small
models of every format and of containers, through profile / strip / pack / restore / report."""

import fuzzing


def test_damaged_inputs_are_errors_never_crashes_or_silent_corruption(tmp_path):
    counts, failures = fuzzing.fuzz(cases=600, seed=20261122, corpus_dir=str(tmp_path / "corpus"), log=lambda _: None)
    assert failures == []
    assert counts["cases"] == 600 and counts["exit0"] + counts["exit2"] == 600
    assert counts["exit2"] > 100 and counts["exit0"] > 50  # the mutations both break and spare files
