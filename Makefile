# `make fit` and `make test` set up what they need: a virtual environment (.venv, or the one already
# active) with the package, its dev tools and the export extra, re-installed when pyproject.toml changes.
PYTHON ?= python3
VENV ?= $(or $(VIRTUAL_ENV),.venv)
BIN := $(VENV)/bin
STAMP := $(VENV)/.ae_lightning-installed
CONFIG ?= configs/vae.yaml
# TORCH_INDEX=https://download.pytorch.org/whl/cpu: torch and torchvision from that index first, e.g. the
# CPU-only build on a machine without a GPU (PyPI's torch for Linux is the CUDA build, 5.7 GB with the rest)
TORCH_INDEX ?=

.PHONY: install fit test lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install torch torchvision --index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -e ".[dev,export]"
	touch $(STAMP)

fit: install  ## train the reference VAE (or CONFIG=configs/ae.yaml; extra flags in ARGS="...")
	$(BIN)/python cli.py fit --config $(CONFIG) $(ARGS)

test: install  ## every test, slow ones included (ARGS="-m 'not slow'" skips those)
	$(BIN)/python -m pytest $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf runs .pytest_cache .ruff_cache
