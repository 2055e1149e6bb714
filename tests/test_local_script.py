"""scripts/prefect_local.sh takes its environment as data: PREFECT_PORT must be a port number, and a
GOQA_PATH holding quotes or backslashes reaches the deployment run as that exact path.
STUB `prefect` (records its arguments, no server) and `python` (answers the health check) as in
tests/test_security.py; the JSON of the job variable is built by the real Python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEP = "\x1f"


def _checkout(tmp_path: Path) -> tuple[list[str], dict[str, str], Path]:
    """A copy of the script in its own checkout (its .prefect state stays there), STUB executables
    on BIN, and the file the STUB prefect records each call's arguments in."""
    checkout, bin_dir, record = tmp_path / "checkout", tmp_path / "bin", tmp_path / "calls.log"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "prefect_local.sh", checkout / "scripts" / "prefect_local.sh")
    bin_dir.mkdir()
    (bin_dir / "prefect").write_text(
        f"#!/bin/sh\nprintf '%s{SEP}' \"$@\" >> {record}\necho >> {record}\n"
        '[ "$1" = server ] && exec sleep 60\nexit 0\n'
    )
    (bin_dir / "python").write_text(
        f"#!/bin/sh\ncase \"$2\" in *json.dumps*) exec {sys.executable} \"$@\" ;; esac\n"
        f"grep -q 'server' {record} 2>/dev/null\n"  # healthy once a server was started
    )
    for exe in ("prefect", "python"):
        (bin_dir / exe).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GOQA_", "PERSONA_ICM_"))}
    env.update(BIN=str(bin_dir), PATH=f"{bin_dir}:{os.environ['PATH']}")
    return ["bash", str(checkout / "scripts" / "prefect_local.sh")], env, record


def test_a_prefect_port_that_is_not_a_port_number_is_refused(tmp_path):
    script, env, record = _checkout(tmp_path)
    marker = tmp_path / "injected"
    for port in [f"1') if 0 else open('{marker}', 'w'); print('", "80a", "0", "65536", "4200 "]:
        done = subprocess.run([*script, "plan"], env={**env, "PREFECT_PORT": port}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stderr.strip() == f"PREFECT_PORT={port}: must be a port number (1-65535)", (port, done.stderr)
    assert not marker.exists() and not record.exists()
    done = subprocess.run([*script, "plan"], env={**env, "PREFECT_PORT": "4300"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_goqa_path_with_quotes_and_backslashes_reaches_the_run_exactly(tmp_path):
    script, env, record = _checkout(tmp_path)
    folder = tmp_path / 'survey "2024" \\ copy'
    folder.mkdir()
    goqa = folder / 'goqa "x" \\.csv'
    goqa.write_text("question,selections,options,source\n")
    try:
        done = subprocess.run([*script, "run"], env={**env, "GOQA_PATH": str(goqa), "PREFECT_PORT": "4391"},
                              capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run([*script, "stop"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = [line.split(SEP)[:-1] for line in record.read_text().splitlines() if line]
    (run,) = [c for c in calls if c[:2] == ["deployment", "run"]]
    variable = run[run.index("--job-variable") + 1]
    assert variable.startswith("env=") and json.loads(variable[len("env="):]) == {"GOQA_PATH": str(goqa)}
