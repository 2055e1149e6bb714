"""Another process holding the DuckDB file: opens wait with backoff, then fail with one clear message.

The holder is a real second Python process with the file open read-write (DuckDB's own lock).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from persona_icm.warehouse import WarehouseLocked, open_warehouse
from tests.helpers import hold

ROOT = Path(__file__).resolve().parent.parent
@pytest.fixture
def warehouse_file(tmp_path):
    path = tmp_path / "w.duckdb"
    open_warehouse(path).close()
    return path


@pytest.mark.parametrize("read_only", [False, True])
def test_a_held_warehouse_fails_naming_the_file_and_the_holder_pid(warehouse_file, read_only):
    holder = hold(warehouse_file, 60)
    try:
        with pytest.raises(WarehouseLocked) as caught:
            open_warehouse(warehouse_file, read_only=read_only, lock_timeout=1.0)
    finally:
        holder.kill()
        holder.wait()
    message = str(caught.value)
    assert str(warehouse_file) in message and f"PID {holder.pid}" in message
    assert "held by another process" in message and caught.value.waited >= 1.0
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_writer_waits_with_backoff_until_the_holder_releases(warehouse_file, caplog):
    holder = hold(warehouse_file, 2.0)
    with caplog.at_level("WARNING", logger="persona_icm.warehouse"):
        with open_warehouse(warehouse_file, lock_timeout=60) as wh:
            assert holder.poll() is not None  # it got in only after the holder let go
            wh.con.execute("INSERT INTO schema_version VALUES (99, 'x', now())")
    holder.wait()
    assert caplog.text.count("locked by another process") == 1  # one warning, not one per retry
    with open_warehouse(warehouse_file, read_only=True) as wh:
        assert wh.scalar("SELECT count(*) FROM schema_version WHERE version = 99") == 1


@pytest.mark.slow
def test_cli_reports_a_held_warehouse_in_one_line_without_a_traceback(warehouse_file):
    holder = hold(warehouse_file, 60)
    try:
        env = {**os.environ, "PERSONA_ICM_WAREHOUSE_LOCK_TIMEOUT": "1", "COLUMNS": "400"}
        done = subprocess.run(
            [sys.executable, "-m", "persona_icm.cli", "--warehouse", str(warehouse_file), "runs"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
    finally:
        holder.kill()
        holder.wait()
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    error_lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and f"PID {holder.pid}" in error_lines[0] and str(warehouse_file) in error_lines[0], output
