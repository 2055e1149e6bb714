"""Flow `persona-icm`: data prep, each country (search + evaluation), the chat baseline, persist, report.

Deployed by module path: `flows.experiment:persona_icm`.

Parameters: a preset (seed, fork, paper, smoke, control, world, world-smoke) and nested overrides of the run config (editable in
the Prefect UI). `fan_out=True` sends each country to the deployment `persona-icm-country/country`
(gpu pool, one worker per tensor-parallel group of GPUs) and waits for all of them, each wait
bounded; with several ICM seeds (icm.seeds), each (country, seed) search first runs as its own
flow run of `persona-icm-search/search` (flows/search.py), so seeds search in parallel. Then the
zero-shot chat baseline runs with the chat model alone (flows/chat.py): as the deployment
`persona-icm-chat/chat` when fanned out and the chat model is local, else in this process after
the base model is released. Only this flow's process writes the warehouse.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run

from flows.chat import chat_flow
from flows.country import CountryResult, country_flow
from persona_icm import backends
from persona_icm.claims import CountrySplit
from persona_icm.config import Preset, RunConfig
from persona_icm.preflight import build_checked_config
from persona_icm.run_identity import run_id_for
from persona_icm.scoring import release_local_models
from tasks.checks import check_inputs
from tasks.data import ingest_goqa, write_claims_and_splits
from tasks.evaluation import MethodResult, chat_methods
from tasks.fanout import run_remotely
from tasks.persist import aggregate_countries, code_version, persist_country, record_run, run_row
from tasks.report import report
from tasks.results import JSON

COUNTRY_DEPLOYMENT = "persona-icm-country/country"
SEARCH_DEPLOYMENT = "persona-icm-search/search"
CHAT_DEPLOYMENT = "persona-icm-chat/chat"


def with_tensor_parallel_size(overrides: dict[str, Any] | None, size: int | None) -> dict[str, Any] | None:
    """`overrides` with vllm.tensor_parallel_size set on every vLLM model (None: unchanged)."""
    if size is None:
        return overrides
    out = dict(overrides or {})
    for role in ("base_model", "chat_model"):
        spec = out.get(role)
        if isinstance(spec, dict) and spec.get("backend") == "vllm":
            out[role] = {**spec, "vllm": {**(spec.get("vllm") or {}), "tensor_parallel_size": size}}
    return out


def countries_remotely(config: RunConfig, splits: list[CountrySplit], run_id: str, timeout: float) -> list[CountryResult]:
    """Each country as its own flow run on the gpu pool; every wait bounded. With several seeds,
    each (country, seed) search runs first as its own flow run, and a country starts once its
    searches are done (it then takes them from the task cache)."""
    searches = searches_remotely(config, splits, timeout) if len(config.icm.searches()) > 1 else {}
    futures = [
        run_remotely.submit(
            COUNTRY_DEPLOYMENT,
            {"config": config.model_dump(mode="json"), "country": s.country, "train": s.train, "test": s.test,
             "run_id": run_id, "remote": True},
            s.country, timeout,
            wait_for=searches.get(s.country, []),
        )
        for s in splits
    ]
    for search in (f for fs in searches.values() for f in fs):
        search.result()  # a failed search fails the run by its name, before its country is awaited
    return [f.result() for f in futures]


def searches_remotely(config: RunConfig, splits: list[CountrySplit], timeout: float) -> dict[str, list[PrefectFuture]]:
    """One flow run per (country, seed) on the gpu pool, all submitted at once."""
    return {
        s.country: [
            run_remotely.submit(
                SEARCH_DEPLOYMENT,
                {"config": config.model_dump(mode="json"), "country": s.country, "train": s.train, "seed": icm.seed,
                 "remote": True},
                f"{s.country}, seed {icm.seed}", timeout,
            )
            for icm in config.icm.searches()
        ]
        for s in splits
    }


def chat_baseline(config: RunConfig, splits: list[CountrySplit], run_id: str, fan_out: bool, timeout: float) -> dict[str, list[MethodResult]]:
    """The zero-shot chat baseline, with no base model alive beside the chat model."""
    parts = {s.country: (s.train, s.test) for s in splits}
    local = config.chat_model is not None and backends.in_process(config.chat_model.backend)
    if fan_out and local:
        parameters = {"config": config.model_dump(mode="json"), "splits": parts, "run_id": run_id, "remote": True}
        return run_remotely(CHAT_DEPLOYMENT, parameters, "zero-shot chat", timeout)
    if local:
        release_local_models()
    return chat_flow(config, parts, run_id)


# Its result (the run_id) is not kept; a failure's exception is, in PREFECT_HOME/storage: as JSON.
@flow(name="persona-icm", log_prints=True, persist_result=False, result_serializer=JSON)
def persona_icm(
    preset: Preset = "smoke",
    overrides: dict[str, Any] | None = None,
    fan_out: bool = False,
    tensor_parallel_size: int | None = None,
    country_timeout_hours: float = 48.0,
) -> str:
    """The whole experiment for the configured countries; returns the run_id.

    tensor_parallel_size: sets vllm.tensor_parallel_size of every vLLM model (`make run` passes
    the GPUs each gpu worker owns). country_timeout_hours: how long a fanned-out country (or the
    chat step) may take before it is cancelled and fails."""
    log = get_run_logger()
    config = build_checked_config(preset, with_tensor_parallel_size(overrides, tensor_parallel_size))
    checked = check_inputs(config, models_here=not fan_out)
    warehouse = Path(config.warehouse_path).resolve()
    timeout = country_timeout_hours * 3600
    timings: dict[str, float] = {}
    started_at, clock = datetime.now(UTC), time.perf_counter()

    ingest_goqa(checked.goqa, warehouse)
    dataset_id = write_claims_and_splits(checked.dataset, warehouse)
    run_id = run_id_for(config, dataset_id, code_version())
    splits = list(checked.splits.values())  # data.countries, or the countries 'all' selected
    timings["data"] = time.perf_counter() - clock
    log.info("run %s: %s", run_id, {s.country: (len(s.train), len(s.test)) for s in splits})
    row = run_row(run_id, config, dataset_id, flow_run.get_id(), "running", started_at=started_at,
                  countries=[s.country for s in splits])
    record_run(warehouse, row)

    try:
        if fan_out:
            results = countries_remotely(config, splits, run_id, timeout)
        else:
            results = [country_flow(config, s.country, s.train, s.test, run_id) for s in splits]
        timings["countries"] = time.perf_counter() - clock - timings["data"]
        chat = chat_baseline(config, splits, run_id, fan_out, timeout) if chat_methods(config.eval.methods) else {}
        timings["chat"] = time.perf_counter() - clock - timings["data"] - timings["countries"]
        for result in results:
            evaluations = result.evaluations + chat.get(result.country, [])
            persist_country(
                warehouse, run_id, result.country, result.searches, evaluations,
                config.eval.bootstrap_samples, config.eval.seed,
            )
        aggregate_countries(warehouse, run_id, config.eval.bootstrap_samples, config.eval.seed)
    except BaseException:
        record_run(warehouse, {**row, "status": "failed", "finished_at": datetime.now(UTC)})
        raise
    timings["total"] = time.perf_counter() - clock
    record_run(warehouse, {**row, "status": "completed", "finished_at": datetime.now(UTC), "timings": timings})
    html = report(warehouse, run_id)  # after the run is recorded complete: its header shows that
    log.info("run %s completed: report %s, warehouse %s", run_id, html, warehouse)
    return run_id
