# Each target bootstraps .venv (and the Fashion-MNIST package where it can) before running.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: train test bench lint typecheck check data clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[numba,plot,dev,distributed,sklearn,onnx,gpu-check]'
	touch $(STAMP)

data:
	@if [ ! -f $(DATA) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing dataset-fashion-mnist"; \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null)); \
	  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
	    sudo apt-get install -y dataset-fashion-mnist; \
	  else \
	    echo "Fashion-MNIST missing: install the Debian package dataset-fashion-mnist or set FASTNET_DATA"; \
	  fi; \
	fi

train: $(STAMP) data
	$(VENV)/bin/fastnet train $(ARGS)

test: $(STAMP) data
	$(PY) -m pytest -q -n auto  # (pytest-xdist: one worker per core)

bench: $(STAMP) data
	mkdir -p .bench-out
	$(VENV)/bin/fastnet bench --json .bench-out/latest.json --plot .bench-out/latest.png $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check fastnet kernels bench tests
	$(VENV)/bin/ruff format --check fastnet kernels bench tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .benchmarks
