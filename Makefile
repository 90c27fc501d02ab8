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

.PHONY: setup lock dataset-package postgresql repro test mlflow-server

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

# PostgreSQL's server binaries for the team-server tests, which make a throwaway cluster on a Unix socket; where
# they cannot be installed those tests are skipped, saying so.
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "postgresql: installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -qq postgresql >/dev/null 2>&1 \
	  || { apt-get update -qq >/dev/null && apt-get install -y -qq postgresql >/dev/null; } \
	  || echo "postgresql: could not install; the team-server tests will be skipped"; \
	else \
	  echo "postgresql: skipped (needs root and apt-get); the team-server tests will be skipped"; \
	fi

repro: setup dataset-package
	dvc repro

test: setup dataset-package postgresql
	python -m pytest

# One MLflow server for a team, on one machine: runs in PostgreSQL, artifacts proxied to S3 (clients need no S3
# credentials; the server's come from its environment, with MLFLOW_S3_ENDPOINT_URL for a non-AWS store).
# Binds 127.0.0.1: put a TLS reverse proxy with authentication in front before opening it to the team.
MLFLOW_BACKEND ?= postgresql://mlflow@/mlflow?host=/var/run/postgresql
MLFLOW_ARTIFACTS ?= s3://mlflow/artifacts
MLFLOW_PORT ?= 5000
mlflow-server: setup
	mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) --backend-store-uri '$(MLFLOW_BACKEND)' \
	  --artifacts-destination '$(MLFLOW_ARTIFACTS)'
