"""The Prefect layer end to end: the smoke flow on a generated GOQA file with the tiny random
model under prefect_test_harness, and `prefect deploy --all` against that server."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TABLES = ["runs", "icm_labels", "icm_trace", "icm_diagnosis", "icm_diagnosis_groups", "predictions", "demos", "metrics",
          "model_calls"]


def _counts(warehouse_path):
    from persona_icm.warehouse import open_warehouse

    with open_warehouse(warehouse_path, read_only=True) as wh:
        return {t: wh.scalar(f"SELECT count(*) FROM {t}") for t in TABLES}


def _with_subflows(client, flow_run_id: str) -> list[str]:
    """The flow run's id and the ids of its subflow runs."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    children = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
    return [flow_run_id] + [str(c.id) for c in children]


def _icm_task_states(flow_run_id: str) -> list[str]:
    """State names of the icm-search task runs under the flow run (they run in its subflows)."""
    from prefect.client.orchestration import get_client

    from tests.helpers import icm_task_states

    with get_client(sync_client=True) as client:
        return icm_task_states(client, _with_subflows(client, flow_run_id))


def _parent_log(flow_run_id: str) -> str:
    """The log lines recorded on the flow run itself (not on its subflows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    messages: list[str] = []
    with get_client(sync_client=True) as client:
        while page := client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                       limit=200, offset=len(messages)):
            messages += [log.message for log in page]
    return "\n".join(messages)


def _progress_artifacts(flow_run_id: str) -> list[float]:
    """Progress of the progress artifacts (searches, evaluations) of the flow run and its subflows."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
    )

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                type=ArtifactFilterType(any_=["progress"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=_with_subflows(client, flow_run_id)),
            )
        )
    return [float(a.data) for a in artifacts]


@pytest.mark.slow
def test_smoke_flow_end_to_end_then_cached(harness, smoke_inputs, monkeypatch):
    from flows.experiment import persona_icm
    from persona_icm.warehouse import open_warehouse
    from tests.helpers import results_alive_at_each_store

    warehouse = smoke_inputs["warehouse_path"]
    alive = results_alive_at_each_store(monkeypatch)
    state = persona_icm(preset="smoke", overrides=smoke_inputs, return_state=True)
    assert state.is_completed(), state
    # each country stored as it is done, not held until the chat baseline: at most the one being stored and the one
    # before it, which Prefect's engine context keeps until the next subflow ends (measured [1, 2, 2, 2] with 4 countries)
    assert alive[0] == 1 and max(alive) <= 2, alive
    run_id = state.result()
    first = _counts(warehouse)

    with open_warehouse(warehouse, read_only=True) as wh:
        run = wh.sql("SELECT * FROM runs").row(0, named=True)
        assert run["run_id"] == run_id and run["status"] == "completed" and run["finished_at"] is not None
        sizes = wh.sql("SELECT country, split, n_claims FROM split_sizes WHERE dataset_id = ?", [run["dataset_id"]])
        train = dict(sizes.filter(sizes["split"] == "train").select("country", "n_claims").iter_rows())
        labels = dict(wh.sql("SELECT country, count(*) FROM icm_labels GROUP BY country").iter_rows())
        assert labels == train and set(labels) == {"United States", "France"}
        trace = wh.sql("SELECT country, max(iteration) AS k, count(*) AS n FROM icm_trace GROUP BY country")
        assert set(trace["k"]) == {6} and set(trace["n"]) == {7}
        main = wh.sql("SELECT country, method FROM results_by_country WHERE experiment = 'main'")
        methods = {"icm", "golden", "random_matched", "zero_shot_base", "zero_shot_chat", "option_prior_golden", "option_prior_icm"}
        for country in ("United States", "France"):
            assert set(main.filter(main["country"] == country)["method"]) == methods
        aggregated = wh.sql("SELECT * FROM results_aggregated WHERE experiment = 'main'")
        assert set(aggregated["method"]) == methods and aggregated["ci_low"].is_not_null().all()
        assert wh.scalar("SELECT count(*) FROM accuracy_vs_examples WHERE n_demos = 4") > 0
        assert wh.scalar("SELECT count(DISTINCT phase) FROM model_calls") >= 3
        # each search diagnosed: gold, ICM's labels, gold flipped; ICM's U is the trace's last
        diagnosis = wh.sql("SELECT d.country, d.labelling, d.U, t.U AS trace_U FROM icm_diagnosis d JOIN icm_trace t"
                           " ON t.run_id = d.run_id AND t.country = d.country AND t.icm_seed = d.icm_seed AND t.iteration = 6")
        assert diagnosis.height == 6 and set(diagnosis["country"]) == {"United States", "France"}
        icm = diagnosis.filter(diagnosis["labelling"] == "icm")
        assert icm["U"].to_list() == pytest.approx(icm["trace_U"].to_list(), abs=1e-4)
        verdicts = wh.sql("SELECT verdict FROM icm_diagnosis_verdict")["verdict"].to_list()
        assert len(verdicts) == 2 and set(verdicts) <= {"search shortfall", "objective prefers other labels", "ICM's labels are gold"}
        assert wh.scalar("SELECT count(*) FROM model_calls WHERE phase = 'diagnosis' AND step = 'icm'") >= 2

    report = Path(warehouse).parent / "reports" / run_id
    page = (report / "report.html").read_text()
    assert "status completed" in page and f"data {run['dataset_id']}" in page
    for chart in ("accuracy_by_method", "accuracy_vs_examples", "icm_trace", "icm_diagnosis"):
        assert (report / f"{chart}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert ET.parse(report / f"{chart}.svg").getroot().tag.endswith("svg")
        assert f'id="{chart}"' in page and f"{chart}.png" in page

    assert _icm_task_states(str(state.state_details.flow_run_id)) == ["Completed", "Completed"]
    parent_log = _parent_log(str(state.state_details.flow_run_id))
    for country in ("United States", "France"):  # what --watch shows: the subflows' progress, on the parent
        assert f"ICM search, {country}: iterations done: 6 of 6 (100%)" in parent_log
        assert f"evaluation icm, {country}: prompt sets scored" in parent_log
    progress = _progress_artifacts(str(state.state_details.flow_run_id))
    assert len(progress) == 2 * 7 and set(progress) == {100.0}  # per country: search, 5 base methods, chat
    second = persona_icm(preset="smoke", overrides=smoke_inputs, return_state=True)
    assert second.is_completed() and second.result() == run_id
    assert _icm_task_states(str(second.state_details.flow_run_id)) == ["Cached", "Cached"]
    assert _counts(warehouse) == first


DEPLOYMENTS = [d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]]


def test_the_deployments_are_the_documented_ones():
    assert set(DEPLOYMENTS) == {"full", "rehearsal", "smoke", "control", "batch", "country", "search", "chat"}


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_each_deployment_imports_and_its_run_config_validates(name):
    from prefect.flows import load_flow_from_entrypoint

    from persona_icm.config import build_config

    deployment = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}[name]
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    assert flow.name == {"batch": "persona-icm-batch", "country": "persona-icm-country", "search": "persona-icm-search",
                         "chat": "persona-icm-chat"}.get(name, "persona-icm")
    params = deployment.get("parameters", {})
    assert set(params) <= set(flow.parameters.properties)
    if "preset" in params:
        from flows.experiment import with_tensor_parallel_size

        config = build_config(params["preset"], with_tensor_parallel_size(params.get("overrides"), params.get("tensor_parallel_size")))
        assert config.preset == params["preset"]


def test_full_takes_preset_fork_and_keeps_its_fp8_kv_cache_under_the_deployments_overrides():
    """`prefect deployment run persona-icm/full -p preset=fork`: the flow's preset parameter offers
    `fork`, and full's vLLM overrides merge with the preset's engine settings instead of replacing them."""
    from prefect.flows import load_flow_from_entrypoint

    from flows.experiment import with_tensor_parallel_size
    from persona_icm.config import build_config

    full = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}["full"]
    flow = load_flow_from_entrypoint(full["entrypoint"])
    assert "fork" in flow.parameters.model_dump()["properties"]["preset"]["enum"]
    params = {**full["parameters"], "preset": "fork"}
    config = build_config(params["preset"], with_tensor_parallel_size(params["overrides"], params["tensor_parallel_size"]))
    assert config.preset == "fork" and config.base_model.name == "meta-llama/Llama-3.1-70B"
    assert config.base_model.vllm.kv_cache_dtype == "fp8" and config.base_model.vllm.tensor_parallel_size == 4
    assert config.chat_model.vllm.kv_cache_dtype == "auto"  # the fork's chat model was a hosted API, not its engine
    assert not config.icm.consistency and config.icm.seed_claims == "first" and config.icm.context_order == "claim"


@pytest.mark.slow
def test_prefect_deploy_all_accepts_prefect_yaml(harness):
    from prefect.client.orchestration import get_client

    env = {**os.environ, "PREFECT_API_URL": harness, "PERSONA_ICM_ROOT": str(ROOT), "PERSONA_ICM_GPU_ROOT": "/opt/persona-icm",
           "PYTHONPATH": str(ROOT)}
    prefect = [sys.executable, "-m", "prefect"]
    for pool in ("cpu", "gpu"):
        subprocess.run([*prefect, "work-pool", "create", pool, "--type", "process"], cwd=ROOT, env=env, capture_output=True)
    done = subprocess.run([*prefect, "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    with get_client(sync_client=True) as client:
        for name, pool in (("persona-icm/full", "cpu"), ("persona-icm/rehearsal", "cpu"), ("persona-icm/smoke", "cpu"),
                           ("persona-icm-batch/batch", "gpu"), ("persona-icm-country/country", "gpu"),
                           ("persona-icm-search/search", "gpu"),
                           ("persona-icm-chat/chat", "gpu")):
            deployment = client.read_deployment_by_name(name)
            assert deployment.work_pool_name == pool
            if pool == "gpu":
                assert deployment.job_variables["env"]["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
            # {{ $PERSONA_ICM_ROOT }} is filled in at deploy time: workers run from this checkout,
            # gpu workers from $PERSONA_ICM_GPU_ROOT (the GPU worker image's /opt/persona-icm)
            directory = deployment.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"]
            assert directory == ("/opt/persona-icm" if pool == "gpu" else str(ROOT))


@pytest.mark.slow
def test_persona_icm_run_parses_the_goqa_file_once(harness, smoke_inputs, tmp_path, monkeypatch, capsys):
    """The CLI's input check, the flow's check-inputs task and the ingest all use one parse; the run
    ends with one ICM diagnosis line per (country, seed)."""
    import json

    from flows.cli import main
    from persona_icm import goqa, preflight

    parses = []
    real = goqa.read_goqa

    def counting(path, *args, **kwargs):
        parses.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(goqa, "read_goqa", counting)
    monkeypatch.setattr(preflight, "_CHECKED", {})
    overrides = {**smoke_inputs, "warehouse_path": str(tmp_path / "wh" / "persona_icm.duckdb"),
                 "eval": {**smoke_inputs["eval"], "methods": ["golden", "zero_shot_base"]}}
    sets = [f"{section}.{key}={json.dumps(value)}" for section, values in overrides.items() if isinstance(values, dict)
            for key, value in values.items()]
    argv = ["--warehouse", overrides["warehouse_path"], "run", "--preset", "smoke"]
    for item in sets:
        argv += ["--set", item]
    main(argv)
    assert parses == [smoke_inputs["data"]["goqa_path"]]
    out = capsys.readouterr().out
    for country in ("United States", "France"):
        line = next(x for x in out.splitlines() if x.startswith(f"ICM diagnosis, {country}, seed 0: "))
        assert ("search shortfall: U(ICM)" in line or "objective prefers other labels: U(ICM)" in line
                or "ICM's labels are gold" in line) and "U(gold flipped)" in line, line


@pytest.mark.slow
def test_a_two_seed_run_searches_and_evaluates_each_seed(harness, smoke_inputs, tmp_path):
    """icm.seeds [0, 1]: two cached searches per country, each seed's labels, trace and predictions,
    and the headline pooled over both seeds (n_seeds 2) with the per-seed ticks in the report."""
    from flows.experiment import persona_icm
    from persona_icm.warehouse import open_warehouse

    warehouse = str(tmp_path / "wh" / "persona_icm.duckdb")
    overrides = {**smoke_inputs, "warehouse_path": warehouse, "icm": {**smoke_inputs["icm"], "seeds": [0, 1]},
                 "eval": {**smoke_inputs["eval"], "methods": ["icm", "golden", "zero_shot_base"]}}
    state = persona_icm(preset="smoke", overrides=overrides, return_state=True)
    assert state.is_completed(), state
    run_id = state.result()
    with open_warehouse(warehouse, read_only=True) as wh:
        seeds = wh.sql("SELECT country, list(DISTINCT icm_seed ORDER BY icm_seed) AS s FROM icm_labels GROUP BY 1 ORDER BY 1")
        assert seeds["s"].to_list() == [[0, 1], [0, 1]]
        assert wh.scalar("SELECT count(DISTINCT icm_seed) FROM icm_trace") == 2
        assert sorted(wh.sql("SELECT DISTINCT icm_seed FROM predictions WHERE method = 'icm'")["icm_seed"]) == [0, 1]
        icm = wh.sql("SELECT n_seeds, n_orders FROM results_by_country WHERE method = 'icm' AND experiment = 'main'")
        assert icm["n_seeds"].to_list() == [2, 2] and icm["n_orders"].to_list() == [4, 4]
        assert wh.scalar("SELECT count(*) FROM accuracy_by_seed WHERE method = 'icm' AND experiment = 'main'") == 4
        assert wh.sql("SELECT country, icm_seed FROM icm_diagnosis_verdict ORDER BY ALL").rows() == [
            ("France", 0), ("France", 1), ("United States", 0), ("United States", 1)]
    spec = (Path(warehouse).parent / "reports" / run_id / "accuracy_by_method.vl.json").read_text()
    assert '"icm_seed"' in spec
