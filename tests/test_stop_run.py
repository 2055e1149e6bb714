"""Stopping `persona-icm run` during its ICM search with SIGINT (Ctrl-C) or SIGTERM, sent to its
process or to its whole process group, with no Prefect server configured (the run starts Prefect's
temporary server): it exits within 30 s with 130 / 143 and one line naming the run and saying
that a rerun resumes, its `runs` row reads `failed`, its checkpoint is kept, and neither the
temporary server nor the temporary Prefect folder is left behind.

Each test prints its measured exit time (pytest -s) for the fault table.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import psutil
import pytest

from persona_icm.warehouse import open_warehouse
from tests.helpers import serverless_env, start_cli_run

pytestmark = pytest.mark.slow

STOP_WITHIN = 30
INTERRUPTED_LINE = re.compile(
    r"^interrupted by (SIGINT|SIGTERM): run (\S+) \(preset smoke\) stopped; "
    r"run the same command again to resume from its last checkpoint$", re.M,
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from tests.goqa_fixtures import make_rows, write_goqa
    from tests.tiny_model import write_tiny_model

    work = tmp_path_factory.mktemp("stop_inputs")
    return {"goqa": write_goqa(work / "goqa.csv", make_rows(24, 4, ["United States", "France"])),
            "model": str(write_tiny_model(work / "tiny-llama"))}


def processes_mentioning(text: str) -> list[psutil.Process]:
    """Live processes whose command line or environment mentions `text`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ", "status"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        words = [*(info["cmdline"] or []), *(info["environ"] or {}).values()]
        if any(text in word for word in words):
            found.append(proc)
    return found


def wait_for_checkpoint(proc: subprocess.Popen, warehouse, log, timeout: float = 600):
    clock = time.perf_counter()
    while not list((warehouse.parent / "checkpoints").glob("*.ckpt")):
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.perf_counter() - clock < timeout, "the search did not start"
        time.sleep(0.1)
    return next((warehouse.parent / "checkpoints").glob("*.ckpt"))


@pytest.mark.parametrize("target", ["process", "group"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_search_stops_the_run_within_30_s_and_leaves_nothing_behind(signum, target, inputs, tmp_path):
    env = serverless_env(tmp_path)
    warehouse, log = tmp_path / "warehouse" / "persona_icm.duckdb", tmp_path / "run.log"
    sets = {
        "data.countries": ["France"], "data.train_cap": 12, "data.test_cap": 8,
        "base_model.backend": "hf", "base_model.name": inputs["model"], "chat_model.name": inputs["model"],
        "icm.num_seed": 4, "icm.iterations": 100_000, "icm.checkpoint_every": 2,  # still searching when stopped
    }
    # its own session: a group signal reaches the run and what it started, not pytest
    proc = start_cli_run(env, warehouse, inputs["goqa"], sets, log, start_new_session=True)
    try:
        checkpoint = wait_for_checkpoint(proc, warehouse, log)
        (server,) = [p for p in psutil.Process(proc.pid).children(recursive=True) if "uvicorn" in p.cmdline()]
        port = int(server.cmdline()[server.cmdline().index("--port") + 1])

        if target == "group":
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        clock = time.perf_counter()
        try:
            proc.wait(timeout=300)
        finally:
            seconds = time.perf_counter() - clock
            print(f"\n[fault] {signal.Signals(signum).name} to the {target}: exit {proc.poll()} after {seconds:.1f} s")
        output = log.read_text()

        assert seconds < STOP_WITHIN, output[-4000:]
        assert proc.returncode == 128 + signum, output[-4000:]
        lines = INTERRUPTED_LINE.findall(output)
        assert len(lines) == 1 and lines[0][0] == signal.Signals(signum).name, output[-4000:]
        assert "ConnectError" not in output and "Connection refused" not in output, output[-4000:]
        with open_warehouse(warehouse, read_only=True) as wh:
            assert wh.sql("SELECT run_id, status FROM runs").rows() == [(lines[0][1], "failed")]
        assert checkpoint.exists()  # what the rerun resumes from

        assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE, "the temporary Prefect server is still running"
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"something still listens on the server's port {port}"
        assert not processes_mentioning(str(tmp_path)), "a process of the run is still alive"
        assert not list((tmp_path / "tmp").glob("persona-icm-prefect-*")), "the temporary Prefect folder is left behind"
    finally:
        for leftover in processes_mentioning(str(tmp_path)):
            leftover.kill()
