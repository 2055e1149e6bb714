# One entry point for people and CI. `make test` works on a fresh clone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: venv test test-marked lint clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel, never a multi-GB CUDA build pulled by a resolver.
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[dev,cpu-models]'
	touch $@

venv: $(BIN)/.installed

test: venv
	$(BIN)/python -m pytest

test-marked: venv
	$(BIN)/python -m pytest -m 'slow or integration'

lint: venv
	$(BIN)/ruff check persona_icm tasks flows tests

clean:
	rm -rf $(VENV) .pytest_cache
