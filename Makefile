# One entry point for newcomers and CI: `make test` and `make train` install what they need first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= crf,coco,sweep,refine,sam,stage2,dev
# Test processes (pytest-xdist): one per core; each runs torch with one thread (tests/conftest.py).
TEST_WORKERS ?= $(shell nproc)

# Tests and demos never touch the network.
export HF_HUB_OFFLINE := 1
export WANDB_MODE ?= disabled
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONUNBUFFERED := 1

.PHONY: install test test-fast lint train bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=24"
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	# SAM 2 (extra sam2) ships as source only; built against the torch installed above, without CUDA kernels.
	SAM2_BUILD_CUDA=0 $(PY) -m pip install --no-build-isolation "sam2==1.1.0"
	touch $(STAMP)

## Everything CI runs: the fast suite and the slow end-to-end tests (training, DDP, sweeps, notebook).
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

## The unit tests only (the tests not marked slow; README, Tests: how long each takes).
test-fast: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow"

lint: install
	$(PY) -m ruff check src tests

## The quickstart: train the tiny model on the built-in synthetic set on CPU.
train: install
	$(PY) -m clustercam_pl.train +experiment=synthetic $(ARGS)

bench: install
	$(PY) -m clustercam_pl.bench train-step --compare $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache outputs multirun
