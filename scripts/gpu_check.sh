#!/usr/bin/env bash
# The GPU acceptance check, first thing on a new GPU box (docs/gpus.md, "gpu_check"): a tiny random
# Llama built locally, scored by vLLM and by the hf backend in float32; prints max |log-odds
# difference|, vLLM's prefix-cache hit rate against persona_icm/kv_cache.py's prediction, the engine
# start time and the installed versions; exits non-zero when the difference exceeds the tolerance.
#
#   scripts/gpu_check.sh [--tolerance 1e-3] [--dtype float32] ...   (python -m benchmarks.gpu_check -h)
#
# Env: PYTHON, the interpreter with vLLM (default .venv/bin/python if it exists, else python3;
# .venv-vllm/bin/python for vLLM's CPU build). Needs no network: the model is built on the spot and the hub is offline.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; fi
fi
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m benchmarks.gpu_check "$@"
