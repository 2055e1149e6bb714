"""Two `persona-icm run` started at once on one machine, with no Prefect server configured, with
every CPU core kept busy until both have started their flows: each starts Prefect's temporary
server, and both must complete with all their rows in one warehouse.

Before each run got a Prefect database of its own, both temporary servers wrote the one SQLite file
under PREFECT_HOME and a run could fail with `sqlite3.OperationalError: database is locked`. Before
the CLI gave its temporary server a startup limit of its own, Prefect's 20 s were too short on a
loaded machine: "Timed out while attempting to connect to ephemeral Prefect API server".
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from persona_icm.warehouse import open_warehouse
from tests.helpers import serverless_env, start_cli_run

BUSY_SECONDS = 600  # each busy loop ends by itself at the latest after this


def test_the_temporary_server_may_take_180_s_to_start_unless_the_user_set_a_limit(tmp_path):
    probe = [sys.executable, "-c", "from flows.temporary_server import startup_seconds; print(startup_seconds())"]
    env = serverless_env(tmp_path)
    limits = [subprocess.run(probe, env=e, capture_output=True, text=True, check=True).stdout.strip()
              for e in (env, {**env, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "45"})]
    assert limits == ["180", "45"]


@pytest.mark.slow
def test_two_runs_started_at_once_on_a_busy_machine_without_a_server_both_complete(tmp_path):
    from tests.goqa_fixtures import make_rows, write_goqa
    from tests.tiny_model import write_tiny_model

    goqa = write_goqa(tmp_path / "goqa.csv", make_rows(24, 4, ["United States", "France"]))
    model = write_tiny_model(tmp_path / "tiny-llama")
    warehouse = tmp_path / "warehouse" / "persona_icm.duckdb"
    env = serverless_env(tmp_path)  # one user's machine: both runs share PREFECT_HOME
    sets = {
        "data.countries": ["United States", "France"], "data.train_cap": 12, "data.test_cap": 8,
        "base_model.backend": "hf", "base_model.name": str(model), "chat_model.name": str(model),
        "icm.num_seed": 4, "icm.iterations": 6, "eval.eval_repeats": 1, "eval.bootstrap_samples": 100,
    }
    # every core busy while both runs start their temporary servers and reach their flows
    busy = [subprocess.Popen([sys.executable, "-c", f"import time\nend = time.time() + {BUSY_SECONDS}\nwhile time.time() < end: pass"])
            for _ in range(2 * (os.cpu_count() or 1))]
    try:
        clock = time.perf_counter()
        procs = [(start_cli_run(env, warehouse, goqa, {**sets, "icm.seed": seed}, tmp_path / f"run{seed}.log"), tmp_path / f"run{seed}.log")
                 for seed in (0, 1)]
        while not all("Beginning flow run" in log.read_text() for _, log in procs):
            assert all(proc.poll() is None for proc, _ in procs), "\n".join(log.read_text()[-4000:] for _, log in procs)
            assert time.perf_counter() - clock < BUSY_SECONDS
            time.sleep(0.5)
        started = time.perf_counter() - clock
    finally:
        for loop in busy:
            loop.kill()
            loop.wait()
    for proc, log in procs:
        assert proc.wait(timeout=900) == 0, log.read_text()[-4000:]
        assert "database is locked" not in log.read_text()
    print(f"\n[fault] two runs at once, {len(busy)} busy loops on {os.cpu_count()} cores: both flows started after "
          f"{started:.0f} s, both runs completed after {time.perf_counter() - clock:.0f} s")

    with open_warehouse(warehouse, read_only=True) as wh:
        runs = wh.sql("SELECT run_id, status FROM runs")
        assert runs.height == 2 and set(runs["status"]) == {"completed"}
        per_run = wh.sql("SELECT run_id, count(DISTINCT country) AS n FROM icm_labels GROUP BY run_id")
        assert per_run["n"].to_list() == [2, 2]
    assert not list((tmp_path / "tmp").glob("persona-icm-prefect-*")), "a run left its temporary Prefect database behind"
