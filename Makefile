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
# --no-compile: Python compiles what is imported, when it is first imported; compiling all of it here took longer
# than the rest of setup (140 s against 56 s without it, on 2 cores).
PIP_INSTALL = $(BIN)/python -m pip install --quiet --no-compile $(TORCH_SOURCE)
# ... and writes the bytecode, so only the first process pays. With PYTHONDONTWRITEBYTECODE set (as on this
# project's CI) nothing is written and every process compiles its imports again: about 2,400 modules, 5 s of
# each stage's process and of each training process on 2 cores. The venv is this Makefile's own, so its targets
# let Python write it.
unexport PYTHONDONTWRITEBYTECODE
DATASET_PACKAGE := dataset-fashion-mnist
# dvc.yaml's `python -m stages.<name>` must find the venv's python.
export PATH := $(BIN):$(PATH)

.PHONY: setup lock dataset-package postgresql chromium repro test test-fast test-random mlflow-server

setup: $(VENV)/.installed

$(VENV)/.installed: $(LOCK) pyproject.toml
	@$(PYTHON) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; sys.exit(0 if v == "$(LOCK_PYTHON)" else \
	  "$(LOCK) pins packages for CPython $(LOCK_PYTHON) on $(LOCK_PLATFORM), not " + v + ": run make with \
	  PYTHON=python$(LOCK_PYTHON), or resolve a lock for your Python (make lock LOCK_PYTHON=...)")'
	$(PYTHON) -m venv --clear $(VENV)  # from scratch: nothing left over from an older lock
	$(PIP_INSTALL) --require-hashes --no-deps -r $(LOCK)
	$(PIP_INSTALL) --no-deps -e .
	touch $@

# Re-resolve the lock from pyproject.toml's ranges and lock-constraints.txt, keeping every pin that still fits them
# (a new dependency adds its pins and changes nothing else); UPGRADE=1 takes the newest versions instead.
lock: | $(VENV)/.installed  # uv comes from the lock itself
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --no-header --quiet \
	  --python-version $(LOCK_PYTHON) --python-platform $(LOCK_PLATFORM) \
	  --constraint lock-constraints.txt $(TORCH_SOURCE) --index-strategy unsafe-best-match $(if $(UPGRADE),--upgrade) \
	  -o $(LOCK)
	@echo "$(LOCK): $$(grep -c '==' $(LOCK)) packages pinned; run make setup to install them"

# System packages from Debian, where apt-get exists: as root, or with sudo where it needs no password (a GitHub
# runner). Elsewhere `make` says how to get them, and the tests that need them fail under CI, naming them.
APT_GET := $(if $(filter 0,$(shell id -u)),apt-get,$(if $(shell sudo -n true 2>/dev/null && echo yes),sudo -n apt-get))
define apt_install  # $(1): the package, $(2): the command that tells it is there, $(3): what it is for
	@if $(2) >/dev/null 2>&1; then \
	  echo "$(1): installed"; \
	elif [ -n "$(APT_GET)" ] && command -v apt-get >/dev/null; then \
	  $(APT_GET) install -y -qq $(1) >/dev/null 2>&1 \
	  || { $(APT_GET) update -qq >/dev/null && $(APT_GET) install -y -qq $(1) >/dev/null; } \
	  || echo "$(1): could not install it with apt-get; $(3)"; \
	else \
	  echo "$(1): not installed (needs apt-get as root or with sudo -n); $(3)"; \
	fi
endef

# The dataset from Debian's package (no network needed); otherwise the download stage uses the official mirrors.
dataset-package:
	$(call apt_install,$(DATASET_PACKAGE),dpkg -s $(DATASET_PACKAGE),download will use the HTTP mirrors)

# PostgreSQL's server binaries, for the team-server tests (a throwaway cluster on a Unix socket).
postgresql:
	$(call apt_install,postgresql,ls /usr/lib/postgresql/*/bin/initdb,install it for the team-server tests)

# Headless Chromium, for the test that renders the PR report's HTML page.
chromium:
	$(call apt_install,chromium,command -v chromium,install it for the report's rendering test)

# `fmnist cached`: a full disk makes `dvc repro` exit 0 with its outputs left out of the cache; this fails then.
repro: setup dataset-package
	dvc repro
	fmnist cached

# Every tier (unit, integration, e2e), on every core; what CI runs (.ci/run).
test: setup dataset-package postgresql chromium
	python -m pytest -n auto --dist loadgroup

# The unit tier alone: seconds, no server, no real data; run it before each commit.
test-fast: setup
	python -m pytest tests/unit

# Every tier in a random order (RANDOM_SEED=<n> repeats one): no test depends on another's leftovers.
RANDOM_SEED ?= $(shell $(PYTHON) -c 'import random; print(random.randrange(10**6))')
test-random: setup dataset-package postgresql chromium
	python -m pytest -n auto --dist loadgroup --random-order-bucket=global \
	  --random-order-seed=$(RANDOM_SEED)

# One MLflow server for a team: runs in PostgreSQL, artifacts proxied to S3 (clients need no S3 credentials; the
# server's come from its environment, with MLFLOW_S3_ENDPOINT_URL for a non-AWS store), accounts and permissions
# by MLflow's basic-auth app in a second database of the same PostgreSQL (deploy/basic_auth.ini). The first start
# creates the admin from MLFLOW_AUTH_ADMIN_PASSWORD; `fmnist access grant` then makes the accounts
# (docs/team-server.md). Binds 127.0.0.1: put a TLS reverse proxy in front before opening it to the team.
MLFLOW_BACKEND ?= postgresql://mlflow@/mlflow?host=/var/run/postgresql
MLFLOW_AUTH_BACKEND ?= postgresql://mlflow@/mlflow_auth?host=/var/run/postgresql
MLFLOW_AUTH_CONFIG ?= $(abspath .mlflow-server/basic_auth.ini)
MLFLOW_ARTIFACTS ?= s3://mlflow/artifacts
MLFLOW_PORT ?= 5000
mlflow-server: setup
	@test -n "$$MLFLOW_FLASK_SERVER_SECRET_KEY" || { echo "mlflow-server: set MLFLOW_FLASK_SERVER_SECRET_KEY \
	  (a random secret, the same for every start: it signs the UI's CSRF tokens)" >&2; exit 2; }
	@mkdir -p $(dir $(MLFLOW_AUTH_CONFIG))
	sed 's|{database_uri}|$(MLFLOW_AUTH_BACKEND)|' deploy/basic_auth.ini > '$(MLFLOW_AUTH_CONFIG)'
	MLFLOW_AUTH_CONFIG_PATH='$(MLFLOW_AUTH_CONFIG)' mlflow server --app-name basic-auth --host 127.0.0.1 \
	  --port $(MLFLOW_PORT) --backend-store-uri '$(MLFLOW_BACKEND)' --artifacts-destination '$(MLFLOW_ARTIFACTS)'
