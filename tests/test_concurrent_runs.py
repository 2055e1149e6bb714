"""Two `persona-icm run` started at once on one machine, with no Prefect server configured: each
starts Prefect's temporary server, and both must complete with all their rows in one warehouse.

Before each run got a Prefect database of its own, both temporary servers wrote the one SQLite file
under PREFECT_HOME and a run could fail with `sqlite3.OperationalError: database is locked`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from persona_icm.warehouse import open_warehouse

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_two_runs_started_at_once_without_a_server_both_complete(tmp_path):
    from persona_icm.tiny_model import write_tiny_model
    from tests.goqa_fixtures import make_rows, write_goqa

    goqa = write_goqa(tmp_path / "goqa.csv", make_rows(24, 4, ["United States", "France"]))
    model = write_tiny_model(tmp_path / "tiny-llama")
    warehouse = tmp_path / "warehouse" / "persona_icm.duckdb"
    home = tmp_path / "prefect-home"  # one user's machine: both runs share it
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME", "PERSONA_ICM_RESULTS")}
    temp = tmp_path / "tmp"
    temp.mkdir()
    env.update(PREFECT_HOME=str(home), TMPDIR=str(temp), PYTHONPATH=str(ROOT), TQDM_DISABLE="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    sets = {
        "data.countries": ["United States", "France"], "data.train_cap": 12, "data.test_cap": 8,
        "base_model.backend": "hf", "base_model.name": str(model), "chat_model.name": str(model),
        "icm.num_seed": 4, "icm.iterations": 6, "eval.eval_repeats": 1, "eval.bootstrap_samples": 100,
    }
    procs = []
    for seed in (0, 1):
        command = [sys.executable, "-m", "flows.cli", "--warehouse", str(warehouse), "run", "--preset", "smoke",
                   "--goqa-path", str(goqa), "--set", f"icm.seed={seed}"]
        for key, value in sets.items():
            command += ["--set", f"{key}={json.dumps(value)}"]
        log = tmp_path / f"run{seed}.log"
        procs.append((subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT), log))
    for proc, log in procs:
        assert proc.wait(timeout=900) == 0, log.read_text()[-4000:]
        assert "database is locked" not in log.read_text()

    with open_warehouse(warehouse, read_only=True) as wh:
        runs = wh.sql("SELECT run_id, status FROM runs")
        assert runs.height == 2 and set(runs["status"]) == {"completed"}
        per_run = wh.sql("SELECT run_id, count(DISTINCT country) AS n FROM icm_labels GROUP BY run_id")
        assert per_run["n"].to_list() == [2, 2]
    assert not list(temp.glob("persona-icm-prefect-*")), "a run left its temporary Prefect database behind"
