"""Honest `runs.status` when a run's process dies without saying so (SIGKILL, OOM, preemption).

A run records the process that owns it: host, PID and that process's start time (so a recycled
PID is not mistaken for the owner). A `running` row whose owner no longer exists on this host
is `interrupted`:
- `claim_run` (the flow's first warehouse write of a run) marks every such row interrupted,
  counts an interrupted earlier attempt of the same run_id in `interrupted_attempts`, and
  refuses to start a run_id that a live process on this host is still running;
- `runs_with_live_status` (what `persona-icm runs` shows) reports them as interrupted at once,
  before any new run has corrected the table.
An owner on another host cannot be checked from here: its row stays `running`.
"""

from __future__ import annotations

import socket
from typing import Any

import polars as pl
import psutil

from persona_icm.warehouse import Warehouse, write_run

RUNNING, INTERRUPTED = "running", "interrupted"


class RunInProgress(RuntimeError):
    """The run_id is being run right now by another live process."""


def this_process() -> dict[str, Any]:
    """The owner columns of a runs row started by this process."""
    me = psutil.Process()
    return {"host": socket.gethostname(), "pid": me.pid, "pid_started": me.create_time()}


def owner_alive(host: str | None, pid: int | None, pid_started: float | None) -> bool | None:
    """True/False for an owner on this host; None when it cannot be known (another host, no owner)."""
    if host is None or pid is None or host != socket.gethostname():
        return None
    try:
        started = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return pid_started is None or abs(started - pid_started) < 1.0


def _dead(row: dict[str, Any]) -> bool:
    return row["status"] == RUNNING and owner_alive(row["host"], row["pid"], row["pid_started"]) is False


def claim_run(wh: Warehouse, row: dict[str, Any]) -> dict[str, str | None]:
    """Write `row` (status running, owned by this process) after marking dead runs interrupted.

    Raises RunInProgress when another live process on this host is running the same run_id.
    Returns run_id -> flow_run_id of the runs marked interrupted.
    """
    row = {**row, **this_process(), "status": RUNNING}
    with wh.transaction():
        running = wh.sql("SELECT run_id, flow_run_id, status, host, pid, pid_started FROM runs WHERE status = ?", [RUNNING])
        dead = {r["run_id"]: r["flow_run_id"] for r in running.iter_rows(named=True) if _dead(r)}
        for r in running.iter_rows(named=True):
            if r["run_id"] == row["run_id"] and r["run_id"] not in dead and owner_alive(r["host"], r["pid"], r["pid_started"]):
                if r["pid"] != row["pid"]:
                    raise RunInProgress(
                        f"run {row['run_id']} is already running in PID {r['pid']} on {r['host']}; "
                        "wait for it to finish or stop it (same parameters give the same run_id)"
                    )
        if dead:
            wh.con.execute(
                "UPDATE runs SET status = ?, interrupted_attempts = coalesce(interrupted_attempts, 0) + 1 "
                "WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [INTERRUPTED, list(dead)],
            )
        before = wh.scalar("SELECT coalesce(interrupted_attempts, 0) FROM runs WHERE run_id = ?", [row["run_id"]])
        write_run(wh, {**row, "interrupted_attempts": before or 0, **kept_study(wh, row)})
    return dead


def kept_study(wh: Warehouse, row: dict[str, Any]) -> dict[str, Any]:
    """A one-model run (its study_id is its run_id) run again alone stays in the study it is part of: {study_id: that
    study}, else {}. (A run is in one study at a time: a later study of it takes it.)"""
    if row.get("study_id") != row["run_id"]:
        return {}
    study = wh.scalar("SELECT study_id FROM runs WHERE run_id = ?", [row["run_id"]])
    return {"study_id": study} if study else {}


def finish_run(wh: Warehouse, row: dict[str, Any]) -> None:
    """Write the run's final row (completed/failed), keeping the owner and interrupted_attempts."""
    with wh.transaction():
        kept = wh.sql("SELECT host, pid, pid_started, interrupted_attempts FROM runs WHERE run_id = ?", [row["run_id"]])
        write_run(wh, {**(kept.row(0, named=True) if kept.height else this_process()), **row, **kept_study(wh, row)})


def run_of_this_process(wh: Warehouse) -> dict[str, Any] | None:
    """The latest runs row this process owns (run_id, preset, status), or None."""
    me = this_process()
    rows = wh.sql(
        "SELECT run_id, preset, status FROM runs WHERE host = ? AND pid = ? AND abs(pid_started - ?) < 1.0 "
        "ORDER BY started_at DESC LIMIT 1", [me["host"], me["pid"], me["pid_started"]],
    )
    return rows.row(0, named=True) if rows.height else None


def runs_with_live_status(wh: Warehouse, query: str = "SELECT * FROM runs ORDER BY started_at DESC") -> pl.DataFrame:
    """`query` over runs (must select status, host, pid, pid_started) with dead running rows shown interrupted."""
    frame = wh.sql(query)
    status = [INTERRUPTED if _dead(r) else r["status"] for r in frame.iter_rows(named=True)]
    return frame.with_columns(status=pl.Series(status, dtype=pl.String))
