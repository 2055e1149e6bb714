"""Faults injected into real flow runs: `persona-icm run` subprocesses (the tiny random Llama,
a generated GOQA file) against the session's Prefect test server.

- SIGKILL during the ICM search, then the same command again: it resumes from the checkpoint
  (killed again, its latest checkpoint truncated: from the one before, with a warning) and ends
  with the results of an uninterrupted run; the killed attempts left no result rows and the
  runs row reads `interrupted` (shown at once, written by the next run).
- Re-running a finished run id changes no result row.
- Two runs writing one warehouse at once, while a third process holds the file: both wait
  for the lock and complete with all their rows.
Each test prints its measured figures (pytest -s) for the fault table in the report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from persona_icm.icm import TRAJECTORY_COLUMNS
from persona_icm.run_status import runs_with_live_status
from persona_icm.warehouse import open_warehouse

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
RESULT_TABLES = ["icm_labels", "icm_trace", "predictions", "demos", "metrics"]
ORDER = {
    "icm_labels": ["country", "claim_id"], "icm_trace": ["country", "iteration"],
    "predictions": ["country", "method", "experiment", "n_demos", "repeat", "claim_id"],
    "demos": ["country", "method", "experiment", "n_demos", "repeat", "position"],
    "metrics": ["country", "method", "experiment", "n_demos"],
}
ITERATIONS = 200  # long enough that a kill aimed at an early checkpoint lands mid-search on a fast machine


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from persona_icm.tiny_model import write_tiny_model
    from tests.goqa_fixtures import make_rows, write_goqa

    work = tmp_path_factory.mktemp("crash_inputs")
    return {
        "data": {"goqa_path": str(write_goqa(work / "goqa.csv", make_rows(24, 4, ["United States", "France"]))),
                 "countries": ["France"], "train_cap": 12, "test_cap": 8},
        "base_model": {"backend": "hf", "name": str(write_tiny_model(work / "tiny-llama"))},
        "icm": {"num_seed": 4, "iterations": ITERATIONS, "checkpoint_every": 2},
        "eval": {"eval_repeats": 1, "demo_sizes": [4], "bootstrap_samples": 100,
                 "methods": ["icm", "golden", "zero_shot_base"]},
    }


def start_run(harness: str, warehouse: Path, results: Path, overrides: dict, log: Path) -> subprocess.Popen:
    """`persona-icm run --preset smoke` in a new process (its own Prefect client, this server)."""
    sets = [f"{section}.{key}={json.dumps(value)}" for section, values in overrides.items() if isinstance(values, dict)
            for key, value in values.items()]
    sets += [f"{key}={json.dumps(value)}" for key, value in overrides.items() if not isinstance(value, dict)]
    env = {
        **os.environ, "PREFECT_API_URL": harness, "PERSONA_ICM_RESULTS": str(results), "PYTHONPATH": str(ROOT),
        "PREFECT_LOGGING_EXTRA_LOGGERS": "persona_icm", "TQDM_DISABLE": "1",
    }
    command = [sys.executable, "-m", "flows.cli", "--warehouse", str(warehouse), "run", "--preset", "smoke"]
    for item in sets:
        command += ["--set", item]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    assert proc.wait(timeout=timeout) == 0, log.read_text()[-4000:]
    return log.read_text()


def checkpoint_iteration(warehouse: Path) -> int | None:
    files = list((warehouse.parent / "checkpoints").glob("*.ckpt"))
    if not files:
        return None
    try:
        return json.loads(json.loads(files[0].read_text())["payload"])["iteration"]
    except (ValueError, KeyError):  # between writes; atomic replace makes this rare
        return None


def tables(warehouse: Path, run_id: str | None = None) -> dict[str, pl.DataFrame]:
    with open_warehouse(warehouse, read_only=True) as wh:
        out = {}
        for table in RESULT_TABLES:
            frame = wh.sql(f"SELECT * FROM {table}" + ("" if run_id is None else " WHERE run_id = ?"), None if run_id is None else [run_id])
            out[table] = frame.sort(ORDER[table], nulls_last=True)
        return out


def without_run_id(frames: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    out = {t: f.drop("run_id") for t, f in frames.items()}
    out["icm_trace"] = out["icm_trace"].select(["country", "icm_seed", *TRAJECTORY_COLUMNS])  # cost columns depend on the memo
    return out


def flow_run_states(flow_run_id: str) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        return {"parent": client.read_flow_run(flow_run_id).state.name, "subflows": [c.state.name for c in children]}


def kill_during_search(proc: subprocess.Popen, log: Path, warehouse: Path, at_least: int) -> tuple[int, float]:
    """SIGKILL `proc` once its search checkpoint reaches iteration `at_least`; (saved iteration, when)."""
    while (done := checkpoint_iteration(warehouse)) is None or done < at_least:
        assert proc.poll() is None, log.read_text()[-4000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    killed_at = time.perf_counter()
    assert proc.wait() == -signal.SIGKILL
    saved = checkpoint_iteration(warehouse)
    assert at_least <= saved < ITERATIONS
    return saved, killed_at


def test_sigkill_mid_search_then_rerun_resumes_to_the_uninterrupted_result(harness, inputs, tmp_path):
    """Killed twice during the search, the second time with its latest checkpoint then truncated."""
    # the reference: the same parameters, uninterrupted, in its own warehouse and result storage
    reference_wh = tmp_path / "reference" / "persona_icm.duckdb"
    clock = time.perf_counter()
    finish(start_run(harness, reference_wh, tmp_path / "reference" / "results", inputs, tmp_path / "reference.log"), tmp_path / "reference.log")
    reference_seconds = time.perf_counter() - clock

    warehouse, results = tmp_path / "crash" / "persona_icm.duckdb", tmp_path / "crash" / "results"
    logs = [tmp_path / f"attempt{i}.log" for i in range(4)]
    first, _ = kill_during_search(start_run(harness, warehouse, results, inputs, logs[0]), logs[0], warehouse, 4)

    # what the killed attempt left: its runs row, no result rows
    with open_warehouse(warehouse, read_only=True) as wh:
        assert wh.sql("SELECT status FROM runs")["status"].to_list() == ["running"]
        assert runs_with_live_status(wh)["status"].to_list() == ["interrupted"]
        killed_flow_run = wh.scalar("SELECT flow_run_id FROM runs")
        assert {t: wh.scalar(f"SELECT count(*) FROM {t}") for t in [*RESULT_TABLES, "model_calls"]} == dict.fromkeys([*RESULT_TABLES, "model_calls"], 0)

    # the same command again resumes from the last checkpoint; killed again further on
    second, killed_at = kill_during_search(start_run(harness, warehouse, results, inputs, logs[1]), logs[1], warehouse, first + 4)
    assert f"from iteration {first}" in logs[1].read_text()  # persona_icm.icm: "resuming ICM run ... from iteration N"
    with open_warehouse(warehouse, read_only=True) as wh:
        assert wh.sql("SELECT status, interrupted_attempts FROM runs").rows() == [("running", 1)]
    assert flow_run_states(killed_flow_run) == {"parent": "Crashed", "subflows": ["Crashed"]}  # was Running, marked by the rerun

    # damage the latest checkpoint: the rerun warns and resumes from the one before it
    checkpoint = next((warehouse.parent / "checkpoints").glob("*.ckpt"))
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    clock = time.perf_counter()
    log = finish(start_run(harness, warehouse, results, inputs, logs[2]), logs[2])
    resumed_seconds = time.perf_counter() - clock
    previous = second - 2  # checkpoint_every
    assert "damaged ICM checkpoint" in log and f"resuming from the previous one (iteration {previous})" in log
    assert f"(resumed from {previous})" in log  # the search task's summary line

    with open_warehouse(warehouse, read_only=True) as wh:
        run = wh.sql("SELECT * FROM runs").row(0, named=True)
    assert (run["status"], run["interrupted_attempts"]) == ("completed", 2)
    resumed, reference = tables(warehouse), tables(reference_wh)
    identical = []
    for table, frame in without_run_id(resumed).items():
        expected = without_run_id(reference)[table]
        assert frame.height > 0
        # Labels, decisions and every non-float column exactly; floats to 1e-5: the resumed process
        # rescoring a prompt the killed one had remembered may batch it differently, and the real
        # model's float32 result can then differ in the last bits (the synthetic scorer, batch
        # invariant, resumes bit for bit: test_icm.py). Bit-identity is reported, not required.
        assert_frame_equal(frame, expected, check_exact=False, rel_tol=0, abs_tol=1e-5)
        identical.append(f"{table} {'bit-identical' if frame.equals(expected) else 'within 1e-5'}")
    print(f"\n[fault] SIGKILL at checkpoint iterations {first} and {second} of {ITERATIONS}, then truncated checkpoint: "
          f"uninterrupted run {reference_seconds:.1f} s, last rerun to completion {resumed_seconds:.1f} s "
          f"(from kill to rerun start {clock - killed_at:.1f} s); {', '.join(identical)}")

    # idempotence: re-running the finished run id changes no result row
    clock = time.perf_counter()
    finish(start_run(harness, warehouse, results, inputs, logs[3]), logs[3])
    again_seconds = time.perf_counter() - clock
    after = tables(warehouse)
    for table in RESULT_TABLES:
        assert after[table].equals(resumed[table]), table
    with open_warehouse(warehouse, read_only=True) as wh:
        assert wh.sql("SELECT run_id, status, interrupted_attempts FROM runs").rows() == [(run["run_id"], "completed", 2)]
    print(f"[fault] re-run of finished run {run['run_id']}: {again_seconds:.1f} s, result rows unchanged")


def test_two_runs_write_one_warehouse_at_once_while_a_third_process_holds_it(harness, inputs, tmp_path):
    from tests.helpers import hold

    warehouse, results = tmp_path / "shared" / "persona_icm.duckdb", tmp_path / "results"
    open_warehouse(warehouse).close()
    holder = hold(warehouse, 120)
    runs = []
    for seed in (1, 2):
        overrides = {**inputs, "icm": {**inputs["icm"], "seed": seed, "iterations": 4},
                     "eval": {**inputs["eval"], "methods": ["icm", "zero_shot_base"]}}
        runs.append((start_run(harness, warehouse, results, overrides, tmp_path / f"run{seed}.log"), tmp_path / f"run{seed}.log"))
    clock = time.perf_counter()
    while not all("locked by another process" in log.read_text() for _, log in runs):  # both reached the warehouse
        assert all(proc.poll() is None for proc, _ in runs) and time.perf_counter() - clock < 180
        time.sleep(0.2)
    holder.kill()
    holder.wait()
    released = time.perf_counter()
    for proc, log in runs:
        finish(proc, log)
    waited = time.perf_counter() - released

    with open_warehouse(warehouse, read_only=True) as wh:
        runs_rows = wh.sql("SELECT run_id, status FROM runs ORDER BY run_id")
        assert runs_rows.height == 2 and set(runs_rows["status"]) == {"completed"}
        train = wh.scalar("SELECT n_claims FROM split_sizes WHERE country = 'France' AND split = 'train'")
        for run_id in runs_rows["run_id"]:
            frames = tables(warehouse, run_id)
            assert frames["icm_labels"].height == train
            assert frames["icm_trace"].height == 5
            assert frames["predictions"].height > 0 and frames["metrics"].height > 0
        seeds = wh.sql("SELECT DISTINCT run_id, icm_seed FROM icm_labels")
        assert seeds.height == 2 and set(seeds["icm_seed"]) == {1, 2}
    print(f"\n[fault] warehouse held by another process: both runs waited, then completed {waited:.1f} s after release")
