# Everything installs into a local virtual environment (.venv); nothing touches the system Python.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
BASE   := $(VENV)/.speechcl-base
STAMP  := $(VENV)/.speechcl-installed

.PHONY: install demo test lint clean

# What the demo needs: torch, torchaudio and the package with its required dependencies.
$(BASE): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch/torchaudio first, pinned to a pair that works together (never the CPU-only 2.13.0+cpu wheel).
	$(BIN)/pip install --quiet "torch==2.14.1" "torchaudio==2.11.*"
	$(BIN)/pip install --quiet -e .
	touch $(BASE)

# Everything the tests need on top: the dev extra (pytest, ruff, transformers as an oracle, the LM decoder, ...).
$(STAMP): $(BASE)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## The main job: the CPU demo recipe (synthesize, pretrain, fine-tune, compare with from-scratch, WER table).
demo: $(BASE)
	PATH="$(CURDIR)/$(BIN):$$PATH" recipes/synthetic/run.sh --setting quick --out exp/demo

## Installs, lints and runs the whole default test suite.
test: $(STAMP)
	$(BIN)/ruff check speechcl tests tools
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check speechcl tests tools

clean:
	rm -rf $(VENV) build *.egg-info
