# Two entry points on a fresh machine: `make run` (main job) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of torch; an unpinned torch pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# A local copy of the book, used when present (no download needed); otherwise `bptt` downloads it.
BOOK   ?= ../shared/data/timemachine.txt

.PHONY: run test install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev,tensorboard]'

run: install
	$(BIN)/bptt train --strategy random --config configs/default.yaml $(if $(wildcard $(BOOK)),--data $(BOOK))

test: install-dev
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/benchmark.py

clean:
	rm -rf $(VENV) runs
