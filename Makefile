# Two commands set everything up on a fresh clone:
#   make demo   create .venv, install bayescale (statistics core), run the end-to-end pipeline on the shipped grid
#   make test   create .venv, install bayescale with the train, ray and dev extras, run the tests
#   make docs   build the documentation (API reference from the docstrings) into site/, warnings as errors
# .ci/run calls `make test`, then `make docs`.

PYTHON ?= $(shell command -v python3.12 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test docs test-slow test-stats bench bench-allocate bench-predict bench-scaling bench-fit bench-fit-estimate bench-calibration bench-trainers clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 12), "bayescale needs Python >= 3.12, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The core installs light (no torch); the test stamp adds the trainers' torch/MONAI/Ray.
# Installs take the versions in constraints.txt: the golden files hold numbers to 1e-9, and a
# fresh install would otherwise take whatever jax the index has that day.
$(VENV)/.core: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.full: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,train,ray]'
	touch $@ $(VENV)/.core

demo: $(VENV)/.core
	$(BIN)/bayescale demo --out demo-out

test: $(VENV)/.full
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

docs: $(VENV)/.full
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# One process: the fits' chains already use both cores (two pytest workers made it 51 min, not faster).
test-slow: $(VENV)/.full
	$(BIN)/python -m pytest -q -m 'slow and not ci_too_long' --durations=15

# The slow tests that do not fit in CI's 90 minutes beside the rest (recovery over ten NUTS worlds).
test-stats: $(VENV)/.full
	$(BIN)/python -m pytest -q -m ci_too_long --durations=15

bench: $(VENV)/.core
	$(BIN)/python benchmarks/bench_pipeline.py

bench-allocate: $(VENV)/.core
	$(BIN)/python benchmarks/bench_allocate.py

bench-predict: $(VENV)/.core
	$(BIN)/python benchmarks/bench_predict.py --resolve

bench-scaling: $(VENV)/.core
	$(BIN)/python benchmarks/bench_scaling.py --regmix

bench-fit: $(VENV)/.core
	$(BIN)/python benchmarks/bench_fit.py

bench-fit-estimate: $(VENV)/.core
	$(BIN)/python benchmarks/bench_fit_estimate.py

bench-calibration: $(VENV)/.core
	$(BIN)/python benchmarks/bench_calibration.py

bench-trainers: $(VENV)/.full
	$(BIN)/python benchmarks/bench_trainers.py

clean:
	rm -rf $(VENV) demo-out site
