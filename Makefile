# `make demo` and `make test` do all set-up from a bare Python 3.11 with pip.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The base install needs no TensorFlow; the tests run every command, so they add the CPU build (any
# TensorFlow distribution in pyproject's tested range works the same).
TENSORFLOW ?= tensorflow-cpu>=2.20,<2.22
export TF_CPP_MIN_LOG_LEVEL := 2
export TF_ENABLE_ONEDNN_OPTS := 0

.PHONY: install demo test fuzz bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]' '$(TENSORFLOW)'
	touch $(STAMP)

install: $(STAMP)

# The main job on a real pretrained model (musicnn's TF1 checkpoint, fetched from its PyPI wheel):
# profile it, strip the Adam slots, profile the result; then sparsify it into the container and report.
demo: $(STAMP)
	@model=$$($(PY) -m wcompress.samples musicnn) && \
	rm -rf demo-out && \
	$(VENV)/bin/wcompress profile "$$model" | tail -n 25 && \
	$(VENV)/bin/wcompress strip "$$model" -o demo-out/ && \
	$(VENV)/bin/wcompress profile demo-out/ | tail -n 3 && \
	$(VENV)/bin/wcompress sparsify demo-out/ --method relative --delta 0.5 --pack --values float16 \
		-o demo-out/sparse.h5 | tail -n 2 && \
	$(VENV)/bin/wcompress report demo-out/sparse.h5 --against "$$model" | tail -n 3

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

# Long fuzz run: damaged and crafted copies of every format through every reader (SEED and CASES may
# be set); each failing case is printed with its seed and number, and its input kept in .cache/fuzz-failures.
fuzz: $(STAMP)
	$(PY) tests/fuzzing.py --cases $${CASES:-10000} --seed $${SEED:-1} --keep .cache/fuzz-failures

bench: $(STAMP)
	$(PY) bench/bench_profile.py
	$(PY) bench/bench_sparsify.py
	$(PY) bench/bench_sweep.py
	$(PY) bench/bench_container.py
	$(PY) bench/bench_bfloat16.py
	$(PY) bench/bench_quantize.py
	$(PY) bench/bench_calibration.py
	$(PY) bench/bench_ray.py

clean:
	rm -rf $(VENV) .cache build *.egg-info
