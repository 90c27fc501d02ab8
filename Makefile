# Two entry points on a fresh machine: `make repro` (set up, then the pipeline) and `make test` (set up, then
# the tests, as CI runs them). Both create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# Pinned where it is installed: an unpinned torch pulls several GB of CUDA wheels.
TORCH ?= torch==2.13.0
DATASET_PACKAGE := dataset-fashion-mnist
# dvc.yaml's `python -m stages.<name>` must find the venv's python.
export PATH := $(BIN):$(PATH)

.PHONY: setup dataset-package repro test

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# The dataset from Debian's package when we can install it (root with apt-get); otherwise the download
# stage uses the official HTTP mirrors.
dataset-package:
	@if dpkg -s $(DATASET_PACKAGE) >/dev/null 2>&1; then \
	  echo "$(DATASET_PACKAGE): installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -qq $(DATASET_PACKAGE) >/dev/null 2>&1 \
	  || { apt-get update -qq >/dev/null && apt-get install -y -qq $(DATASET_PACKAGE) >/dev/null; } \
	  || echo "$(DATASET_PACKAGE): could not install; download will use the HTTP mirrors"; \
	else \
	  echo "$(DATASET_PACKAGE): skipped (needs root and apt-get); download will use the HTTP mirrors"; \
	fi

repro: setup dataset-package
	dvc repro

test: setup dataset-package
	python -m pytest
