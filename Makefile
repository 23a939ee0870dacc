# Everything installs into a local virtual environment (.venv); nothing touches the system Python.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.speechcl-installed

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch/torchaudio first, pinned to a pair that works together (never the CPU-only 2.13.0+cpu wheel).
	$(BIN)/pip install --quiet "torch==2.14.1" "torchaudio==2.11.*"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## The main job: the CPU demo (pretraining smoke run on a synthesized corpus until the full recipe lands).
demo: $(STAMP)
	$(BIN)/python tools/demo.py

## Installs, lints and runs the whole default test suite.
test: $(STAMP)
	$(BIN)/ruff check speechcl tests tools
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check speechcl tests tools

clean:
	rm -rf $(VENV) build *.egg-info
