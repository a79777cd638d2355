# Set-up and checks. `make demo` and `make test` are the two commands a user needs (README).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SYSTEM_TORCH ?= 0
# CPU wheels pinned for machines without an NVIDIA GPU (the dev box and CI).
CPU_TORCH := torch==2.13.0
CPU_TRITON := triton==3.7.1
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)

.PHONY: venv demo test lint gpu-check gpu-check-dry gpu-wheels bench clean

$(VENV)/.stamp: pyproject.toml Makefile
	@if [ ! -x $(PY) ]; then \
	  if [ "$(SYSTEM_TORCH)" = "1" ]; then $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; fi
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	@if [ "$(SYSTEM_TORCH)" = "1" ]; then \
	  echo "reusing the torch already installed: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif [ "$(HAS_GPU)" = "1" ]; then \
	  echo "NVIDIA GPU found: installing the CUDA build of torch and the triton it requires"; \
	  $(PY) -m pip install -q torch triton; \
	else \
	  echo "no NVIDIA GPU: installing the CPU wheels $(CPU_TORCH) $(CPU_TRITON)"; \
	  $(PY) -m pip install -q $(CPU_TORCH) $(CPU_TRITON); \
	fi
	$(PY) -m pip install -q -e '.[train,dev]'
	@touch $@

venv: $(VENV)/.stamp

demo: venv
	$(PY) examples/quickstart.py

test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The prepared GPU check (benchmarks/README.md gives the exact device call). Runs with the machine's own
# python (no registry there): missing wheels come from .whl/.
gpu-check:
	bash benchmarks/gpu_check.sh $(GPU_CHECK_ARGS)

# Wheels a lent GPU machine lacks (it has no package registry): carried in .whl/ with the device call.
gpu-wheels:
	mkdir -p .whl
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl skl2onnx==1.20.0 platformdirs==4.14.8

# The same script on the CPU through the Triton interpreter, tiny shapes and budgets.
gpu-check-dry: venv
	TRITON_INTERPRET=1 $(PY) benchmarks/gpu_check.py --dry-run --out $${OUT:-results/dry-run}

bench: venv
	$(PY) benchmarks/selection_overhead.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
