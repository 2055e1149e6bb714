"""One pinned GPU stack: the vLLM rehearsed here (0.32.0) and a Prefect that resolves with it, installed
under constraints/gpu.txt by `make run` on a GPU box, the Dockerfile and scripts/vllm_cpu_venv.sh.

The resolution test asks PyPI (metadata only, `--use-feature=fast-deps`: no CUDA wheel is downloaded)
what `make run` on a machine whose nvidia-smi lists GPUs (a STUB nvidia-smi) would install.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("gpu_constraints", ROOT / "scripts" / "gpu_constraints.py")
gpu_constraints = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_constraints)

PINS = gpu_constraints.read_pins()
NETWORK_TROUBLE = re.compile(r"NewConnectionError|Temporary failure in name resolution|Network is unreachable"
                             r"|ReadTimeoutError|No space left on device")


def gpu_extra() -> dict[str, Requirement]:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    return {Requirement(r).name: Requirement(r) for r in extra}


def test_the_rehearsed_vllm_is_pinned_everywhere_with_a_prefect_that_resolves_with_it():
    extra = gpu_extra()
    assert str(extra["vllm"].specifier) == "==0.32.0"
    assert PINS["vllm"] == "0.32.0"
    assert re.search(r"^ARG VLLM_VERSION=0\.32\.0$", (ROOT / "Dockerfile").read_text(), re.M)
    assert 'VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"' in (ROOT / "scripts" / "vllm_cpu_venv.sh").read_text()
    # vLLM 0.32.0 caps fastapi below 0.137 and Prefect >= 3.8 needs fastapi >= 0.139
    assert PINS["prefect"] in extra["prefect"].specifier and PINS["prefect"].startswith("3.7.")
    assert tuple(map(int, PINS["fastapi"].split(".")[:2])) < (0, 137)
    # the torch version vLLM 0.32.0 pins is the CPU wheel's version the other venvs install
    assert PINS["torch"] == "2.13.0"
    assert "TORCH_VERSION ?= 2.13.0" in (ROOT / "Makefile").read_text()
    assert {"s3fs", "gcsfs"} <= set(PINS)  # the storage extra is locked too


def test_the_vllm_cpu_venv_installs_under_every_gpu_pin_but_the_listed_ones():
    shared = gpu_constraints.shared_with_vllm_cpu()
    own = gpu_constraints.NOT_SHARED_WITH_VLLM_CPU
    assert own and set(own) <= set(PINS), "an exception for a package the lock does not pin is stale"
    assert shared == {k: v for k, v in PINS.items() if k not in own}
    for name in ("prefect", "fastapi", "pydantic", "transformers", "tokenizers", "numpy", "torch", "polars", "duckdb"):
        assert shared[name] == PINS[name]
    script = (ROOT / "scripts" / "vllm_cpu_venv.sh").read_text()
    installs = [line for line in script.splitlines() if '"${PIP[@]}" install' in line]
    assert len(installs) == 3 and all('-c "$SHARED"' in line for line in installs), installs
    printed = subprocess.run(["python3", "scripts/gpu_constraints.py", "--shared-with-vllm-cpu"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    assert printed.splitlines() == [f"{k}=={v}" for k, v in sorted(shared.items())]


def test_the_image_installs_under_the_lock_asserts_vllm_and_keeps_caches_on_a_volume():
    docker = (ROOT / "Dockerfile").read_text()
    assert "COPY constraints ./constraints" in docker
    assert "pip install --no-cache-dir -c constraints/gpu.txt -e '.[gpu,storage]'" in docker
    assert "assert vllm.__version__ == '${VLLM_VERSION}'" in docker
    assert "HF_HOME=/cache/huggingface" in docker and "VLLM_CACHE_ROOT=/cache/vllm" in docker
    assert 'VOLUME ["/cache"]' in docker


@pytest.mark.slow
def test_make_run_on_a_gpu_box_resolves_the_pinned_vllm_and_prefect_and_nothing_unlocked(gpus, tmp_path):
    """`make venv` (the install step of `make run`) with a STUB nvidia-smi listing 4 GPUs, in dry-run
    mode (PIP_REPORT), against PyPI with this machine's pip configuration dropped, as on a GPU box."""
    report = tmp_path / "report.json"
    env = gpu_constraints.pypi_env(gpus(4))
    done = subprocess.run(["make", "venv", f"VENV={tmp_path / 'venv'}", f"PIP_REPORT={report}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    log = done.stdout + done.stderr
    if done.returncode != 0 and NETWORK_TROUBLE.search(log):
        pytest.skip(f"PyPI unreachable:\n{log[-2000:]}")
    assert done.returncode == 0, log[-4000:]
    assert "-c constraints/gpu.txt -e '.[dev,cpu-models,gpu,storage]'" in done.stdout
    assert "pip install -q torch==" not in done.stdout  # no CPU torch step on a GPU box
    resolved = gpu_constraints.report_pins(report)
    assert resolved["vllm"] == "0.32.0" and resolved["prefect"] == PINS["prefect"]
    assert resolved["torch"] == PINS["torch"] and resolved["s3fs"] == PINS["s3fs"]
    assert {k: v for k, v in resolved.items() if PINS.get(k) != v} == {}, "installed at a version the lock does not pin"
    assert not list((tmp_path / "venv" / "bin").glob(".installed-*")), "a dry run must not stamp the venv"
