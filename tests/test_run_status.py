"""runs.status stays honest when a run's process dies: real processes, killed with SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import UTC, datetime

import psutil
import pytest

from persona_icm.run_status import (
    RunInProgress,
    claim_run,
    finish_run,
    run_of_this_process,
    runs_with_live_status,
    this_process,
)
from persona_icm.warehouse import open_warehouse, write_run


def run_row(run_id: str, status: str = "running", **owner) -> dict:
    return {
        "run_id": run_id, "preset": "smoke", "config_json": "{}", "base_model": "hf:tiny", "countries": ["France"],
        "dataset_id": "d1", "code_version": "test", "started_at": datetime.now(UTC), "status": status, **owner,
    }


def owner_of(proc: subprocess.Popen) -> dict:
    p = psutil.Process(proc.pid)
    return {"host": this_process()["host"], "pid": p.pid, "pid_started": p.create_time()}


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def killed_owner():
    """The owner columns of a process that was SIGKILLed (and reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    owner = owner_of(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return owner


def statuses(wh) -> dict[str, str]:
    return dict(wh.sql("SELECT run_id, status FROM runs").iter_rows())


def test_a_killed_run_shows_interrupted_and_the_next_run_marks_it(tmp_path, killed_owner, sleeper):
    with open_warehouse(tmp_path / "w.duckdb") as wh:
        write_run(wh, run_row("dead", **killed_owner))
        write_run(wh, run_row("alive", **owner_of(sleeper)))
        write_run(wh, run_row("elsewhere", host="another-host", pid=1, pid_started=0.0))
        write_run(wh, run_row("done", "completed", **killed_owner))
        # readers see the truth before anything is rewritten
        shown = dict(runs_with_live_status(wh).select("run_id", "status").iter_rows())
        assert shown == {"dead": "interrupted", "alive": "running", "elsewhere": "running", "done": "completed"}
        assert statuses(wh)["dead"] == "running"
        # the next run started on this host writes it down
        assert claim_run(wh, run_row("new")) == {"dead": None}
        assert statuses(wh) == {"dead": "interrupted", "alive": "running", "elsewhere": "running", "done": "completed", "new": "running"}
        new = wh.sql("SELECT * FROM runs WHERE run_id = 'new'").row(0, named=True)
        assert (new["host"], new["pid"]) == (this_process()["host"], this_process()["pid"])


def test_a_recycled_pid_is_not_the_owner(tmp_path, sleeper):
    owner = {**owner_of(sleeper), "pid_started": owner_of(sleeper)["pid_started"] - 3600}
    with open_warehouse(tmp_path / "w.duckdb") as wh:
        write_run(wh, run_row("old", **owner))
        assert runs_with_live_status(wh)["status"].to_list() == ["interrupted"]


def test_rerunning_an_interrupted_run_counts_the_attempt_and_finishing_keeps_it(tmp_path, killed_owner):
    with open_warehouse(tmp_path / "w.duckdb") as wh:
        write_run(wh, run_row("r", flow_run_id="f1", **killed_owner))
        assert claim_run(wh, run_row("r")) == {"r": "f1"}
        row = wh.sql("SELECT * FROM runs").row(0, named=True)
        assert (row["status"], row["interrupted_attempts"], row["pid"]) == ("running", 1, this_process()["pid"])
        finish_run(wh, run_row("r", "completed", finished_at=datetime.now(UTC)))
        row = wh.sql("SELECT * FROM runs").row(0, named=True)
        assert (row["status"], row["interrupted_attempts"], row["pid"]) == ("completed", 1, this_process()["pid"])
        # a later re-run of the finished run is not an interruption
        claim_run(wh, run_row("r"))
        assert wh.scalar("SELECT interrupted_attempts FROM runs") == 1


def test_a_run_id_a_live_process_is_running_is_refused_and_left_alone(tmp_path, sleeper):
    with open_warehouse(tmp_path / "w.duckdb") as wh:
        write_run(wh, run_row("r", **owner_of(sleeper)))
        with pytest.raises(RunInProgress, match=f"already running in PID {sleeper.pid}"):
            claim_run(wh, run_row("r"))
        assert wh.sql("SELECT status, pid FROM runs").row(0) == ("running", sleeper.pid)
        # this process re-claiming its own run (a Prefect flow retry) is fine
        claim_run(wh, run_row("mine"))
        claim_run(wh, run_row("mine"))
        assert statuses(wh)["mine"] == "running"


def test_the_run_of_this_process_is_the_latest_row_it_owns_not_another_process_s(tmp_path, sleeper):
    """What `persona-icm run` names when it is interrupted: its own run, not a concurrent one."""
    with open_warehouse(tmp_path / "w.duckdb") as wh:
        assert run_of_this_process(wh) is None
        write_run(wh, run_row("other", **owner_of(sleeper)))
        assert run_of_this_process(wh) is None
        claim_run(wh, run_row("mine"))
        write_run(wh, {**run_row("later", **owner_of(sleeper)), "started_at": datetime.now(UTC)})
        finish_run(wh, {**run_row("mine"), "status": "failed"})
        assert run_of_this_process(wh) == {"run_id": "mine", "preset": "smoke", "status": "failed"}
