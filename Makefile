# Two entry points on a fresh machine: `make repro` (set up, then the pipeline) and `make test` (set up, then
# the tests, as CI runs them). Both create .venv and install exactly what requirements.lock pins.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
LOCK := requirements.lock
# What the lock is resolved for; setup refuses another interpreter rather than install untested versions.
LOCK_PYTHON ?= 3.11
LOCK_PLATFORM ?= x86_64-manylinux_2_28
# torch's CPU build (torch==X+cpu) is served by PyTorch's own index, not PyPI, whose Linux torch pulls GBs of
# CUDA wheels; a machine whose pip is configured with a wheelhouse (find-links, as on this project's CI) uses that.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PIP_FIND_LINKS := $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
TORCH_SOURCE ?= $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),--extra-index-url $(TORCH_INDEX))
PIP_INSTALL = $(BIN)/python -m pip install --quiet $(TORCH_SOURCE)
DATASET_PACKAGE := dataset-fashion-mnist
# dvc.yaml's `python -m stages.<name>` must find the venv's python.
export PATH := $(BIN):$(PATH)

.PHONY: setup lock dataset-package repro test

setup: $(VENV)/.installed

$(VENV)/.installed: $(LOCK) pyproject.toml
	@$(PYTHON) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; sys.exit(0 if v == "$(LOCK_PYTHON)" else \
	  "$(LOCK) pins packages for CPython $(LOCK_PYTHON) on $(LOCK_PLATFORM), not " + v + ": run make with \
	  PYTHON=python$(LOCK_PYTHON), or resolve a lock for your Python (make lock LOCK_PYTHON=...)")'
	$(PYTHON) -m venv --clear $(VENV)  # from scratch: nothing left over from an older lock
	$(PIP_INSTALL) --require-hashes --no-deps -r $(LOCK)
	$(PIP_INSTALL) --no-deps -e .
	touch $@

# Re-resolve the lock from pyproject.toml's ranges (newest versions that satisfy them) and lock-constraints.txt.
lock: | $(VENV)/.installed  # uv comes from the lock itself
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --no-header --quiet \
	  --python-version $(LOCK_PYTHON) --python-platform $(LOCK_PLATFORM) \
	  --constraint lock-constraints.txt $(TORCH_SOURCE) --index-strategy unsafe-best-match -o $(LOCK)
	@echo "$(LOCK): $$(grep -c '==' $(LOCK)) packages pinned; run make setup to install them"

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
