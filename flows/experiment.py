"""Flow `persona-icm`: data prep, each country (search + evaluation), the chat baseline, persist, report.

Deployed by module path: `flows.experiment:persona_icm`.

Parameters: a preset (seed, fork, paper, smoke, control, world, world-smoke) and nested overrides of the run config (editable in
the Prefect UI). `fan_out=True` shares the countries among the gpu workers: one flow run of
`persona-icm-batch/batch` per worker (flows/batch.py), which runs its countries one after another
as subflows on one engine, so each model loads once per worker (persona_icm/batches.py); with
several ICM seeds (icm.seeds) and fewer countries than workers, the (country, seed) searches first
run as batches of their own, so the seeds search in parallel. Every wait is bounded. Then the
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
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import WorkerStatus
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from pydantic import PositiveInt

from flows.chat import chat_flow
from flows.country import CountryResult, country_flow
from persona_icm import backends
from persona_icm.batches import SplitSize, plan_batches
from persona_icm.claims import CountrySplit
from persona_icm.config import Preset, RunConfig
from persona_icm.preflight import build_checked_config
from persona_icm.run_identity import run_id_for
from persona_icm.scoring import release_local_models
from tasks.checks import check_inputs
from tasks.data import ingest_goqa, write_claims_and_splits
from tasks.evaluation import MethodResult, chat_methods
from tasks.fanout import ChildCrashed, ChildFailed, run_remotely
from tasks.persist import aggregate_countries, code_version, persist_country, record_run, run_row
from tasks.report import report
from tasks.results import JSON

BATCH_DEPLOYMENT = "persona-icm-batch/batch"
GPU_POOL = "gpu"
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


def online_gpu_workers(pool: str = GPU_POOL) -> int:
    """The workers of `pool` the server sees ONLINE (their heartbeats are recent), at least 1."""
    with get_client(sync_client=True) as client:
        workers = client.read_workers_for_work_pool(pool)
    return max(1, sum(w.status == WorkerStatus.ONLINE for w in workers))


def countries_remotely(config: RunConfig, splits: list[CountrySplit], run_id: str, timeout: float, workers: int) -> list[CountryResult]:
    """The countries shared among `workers` gpu workers: one batch flow run each (flows/batch.py),
    every wait bounded. With a first wave of search batches (persona_icm/batches.py), a country
    batch starts once the batches holding its countries' searches are done and takes them from the
    task cache."""
    plan = plan_batches([SplitSize(s.country, len(s.train), len(s.test)) for s in splits],
                        [icm.seed for icm in config.icm.searches()], workers)
    get_run_logger().info("%d gpu worker(s): search batches %s, country batches %s", workers, plan.search_batches, plan.country_batches)
    split = {s.country: s for s in splits}
    common = {"config": config.model_dump(mode="json"), "run_id": run_id}
    searches = []
    for batch in plan.search_batches:
        label = "searches: " + ", ".join(f"{country} seed {seed}" for country, seed in batch)
        units = [{"country": country, "train": split[country].train, "seed": seed} for country, seed in batch]
        searches.append((batch, run_remotely.submit(BATCH_DEPLOYMENT, {**common, "label": label, "searches": units}, label,
                                                    timeout * len(batch))))
    futures: list[PrefectFuture] = []
    for batch in plan.country_batches:
        label = ", ".join(batch)
        units = [{"country": c, "train": split[c].train, "test": split[c].test} for c in batch]
        before = [future for held, future in searches if {country for country, _ in held} & set(batch)]
        futures.append(run_remotely.submit(BATCH_DEPLOYMENT, {**common, "label": label, "countries": units}, label,
                                           timeout * len(batch), wait_for=before))
    for _, search in searches:
        search.result()  # a failed search batch fails the run by its name, before its countries are awaited
    results, lost = {}, []
    for future in as_completed(futures):  # every batch is awaited, so none runs on orphaned after a failure
        try:
            results.update((r.country, r) for r in future.result())
        except (ChildCrashed, ChildFailed) as error:
            lost.append(str(error))
    if lost:
        raise ChildFailed(f"{len(lost)} of {len(futures)} country batches lost (the others' searches are cached):\n" + "\n".join(lost))
    return [results[s.country] for s in splits]


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
    gpu_workers: PositiveInt | None = None,
) -> str:
    """The whole experiment for the configured countries; returns the run_id.

    tensor_parallel_size: sets vllm.tensor_parallel_size of every vLLM model (`make run` passes
    the GPUs each gpu worker owns). country_timeout_hours: how long a fanned-out country (or a
    search, or the chat step) may take before it is cancelled and fails (a batch: that many times
    its countries or searches). gpu_workers: how many gpu workers a
    fanned-out run shares its countries among, one batch (one engine) each; None: the workers of the
    `gpu` pool that are online now."""
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
            workers = gpu_workers if gpu_workers is not None else online_gpu_workers()
            results = countries_remotely(config, splits, run_id, timeout, workers)
        else:
            results = [country_flow(config, s.country, s.train, s.test, run_id) for s in splits]
        timings["countries"] = time.perf_counter() - clock - timings["data"]
        chat = chat_baseline(config, splits, run_id, fan_out, timeout) if chat_methods(config.eval.methods) else {}
        timings["chat"] = time.perf_counter() - clock - timings["data"] - timings["countries"]
        for result in results:
            evaluations = result.evaluations + chat.get(result.country, [])
            persist_country(
                warehouse, run_id, result.country, result.searches, evaluations,
                config.eval.bootstrap_samples, config.eval.seed, diagnoses=result.diagnoses,
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
