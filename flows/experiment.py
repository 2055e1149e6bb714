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

Several base models (base_models) make a study: the per-country experiment runs once per model, one
after another, each model its own run (the run_id a one-model run of it has) and all of them one
study_id; the chat baseline, which no base model changes, runs once and is stored in each run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import WorkerStatus
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from pydantic import PositiveInt

from flows.chat import chat_flow
from flows.country import CountryResult, country_flow
from persona_icm import backends
from persona_icm.batches import (
    SplitSize,
    engine_start_bound,
    engine_starts,
    plan_batches,
    study_plans,
)
from persona_icm.claims import CountrySplit
from persona_icm.config import Preset, RunConfig
from persona_icm.preflight import build_checked_config
from persona_icm.run_identity import run_id_for, study_id_for
from persona_icm.scoring import release_local_models
from tasks.checks import check_inputs
from tasks.data import ingest_goqa, write_claims_and_splits
from tasks.evaluation import MethodResult, chat_methods
from tasks.fanout import ChildCrashed, ChildFailed, child_result, run_remotely
from tasks.persist import (
    aggregate_countries,
    code_version,
    persist_chat,
    persist_country,
    record_run,
    run_row,
)
from tasks.report import report, study_report
from tasks.results import JSON
from tasks.scorers import model_name

BATCH_DEPLOYMENT = "persona-icm-batch/batch"
GPU_POOL = "gpu"
CHAT_DEPLOYMENT = "persona-icm-chat/chat"


def with_tensor_parallel_size(overrides: dict[str, Any] | None, size: int | None) -> dict[str, Any] | None:
    """`overrides` with vllm.tensor_parallel_size set on every vLLM model, each of base_models too (None: unchanged)."""
    if size is None:
        return overrides
    def sized(spec: Any) -> Any:
        if isinstance(spec, dict) and spec.get("backend") == "vllm":
            return {**spec, "vllm": {**(spec.get("vllm") or {}), "tensor_parallel_size": size}}
        return spec

    out = dict(overrides or {})
    for role in ("base_model", "chat_model"):
        if role in out:
            out[role] = sized(out[role])
    if isinstance(out.get("base_models"), list):
        out["base_models"] = [sized(spec) for spec in out["base_models"]]
    return out


def online_gpu_workers(pool: str = GPU_POOL) -> int:
    """The workers of `pool` the server sees ONLINE (their heartbeats are recent), at least 1."""
    with get_client(sync_client=True) as client:
        workers = client.read_workers_for_work_pool(pool)
    return max(1, sum(w.status == WorkerStatus.ONLINE for w in workers))


def countries_remotely(config: RunConfig, splits: list[CountrySplit], run_id: str, timeout: float, workers: int,
                       model: str | None = None) -> Iterator[CountryResult]:
    """The countries shared among `workers` gpu workers: one batch flow run each (flows/batch.py),
    every wait bounded; `model` (a study's) starts each batch's name. With a first wave of search batches (persona_icm/batches.py), a country
    batch starts once the batches holding its countries' searches are done and takes them from the
    task cache. Yields each batch's countries as the batch completes, its result read from the result
    storage then, so the parent holds one batch's results at a time."""
    plan = plan_batches([SplitSize(s.country, len(s.train), len(s.test)) for s in splits],
                        [icm.seed for icm in config.icm.searches()], workers)
    get_run_logger().info("%d gpu worker(s): search batches %s, country batches %s", workers, plan.search_batches, plan.country_batches)
    split = {s.country: s for s in splits}
    common = {"config": config.model_dump(mode="json"), "run_id": run_id}
    named = f"{model}: " if model else ""
    searches = []
    for batch in plan.search_batches:
        label = named + "searches: " + ", ".join(f"{country} seed {seed}" for country, seed in batch)
        units = [{"country": country, "train": split[country].train, "seed": seed} for country, seed in batch]
        searches.append((batch, run_remotely.submit(BATCH_DEPLOYMENT, {**common, "label": label, "searches": units}, label,
                                                    timeout * len(batch), keep_result=False)))
    futures: list[PrefectFuture] = []
    for batch in plan.country_batches:
        label = named + ", ".join(batch)
        units = [{"country": c, "train": split[c].train, "test": split[c].test} for c in batch]
        before = [future for held, future in searches if {country for country, _ in held} & set(batch)]
        futures.append(run_remotely.submit(BATCH_DEPLOYMENT, {**common, "label": label, "countries": units}, label,
                                           timeout * len(batch), keep_result=False, wait_for=before))
    for _, search in searches:
        search.result()  # a failed search batch fails the run by its name, before its countries are awaited
    lost = []
    for future in as_completed(futures):  # every batch is awaited, so none runs on orphaned after a failure
        try:
            batch_run = future.result()
        except (ChildCrashed, ChildFailed) as error:
            lost.append(str(error))
            continue
        yield from child_result(batch_run)
    if lost:
        raise ChildFailed(f"{len(lost)} of {len(futures)} country batches lost (the others' searches are cached, "
                          "their countries stored):\n" + "\n".join(lost))


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


@dataclass
class ModelRun:
    """One base model's run of a study: its config (a one-model run of that model), run_id and `runs` row."""

    config: RunConfig
    run_id: str
    row: dict[str, Any]


def chat_for_run(chat: dict[str, list[MethodResult]], run_id: str, computed_here: bool) -> dict[str, list[MethodResult]]:
    """The chat baseline's results with the rows keyed by `run_id`: the baseline is model-independent, so a study
    computes it once and stores its predictions and demos in each model's run, and its model calls (the work done)
    only in the run it was computed under (`computed_here`)."""
    def keyed(e: MethodResult) -> MethodResult:
        frames = {name: getattr(e, name).with_columns(run_id=pl.lit(run_id)) for name in ("predictions", "demos")}
        return e.model_copy(update={**frames, **({} if computed_here else {"calls": e.calls.clear()})})

    return {country: [keyed(e) for e in results] for country, results in chat.items()}


def countries_of_model(config: RunConfig, splits: list[CountrySplit], run_id: str, fan_out: bool, timeout: float,
                       workers: int | None, study: bool) -> Iterator[CountryResult]:
    """One base model's countries, each yielded when done: fanned out over the gpu workers (in a
    `study`, the batches' names start with the model's), or here on this process's engine."""
    if fan_out:
        yield from countries_remotely(config, splits, run_id, timeout, workers, model_name(config.base_model) if study else None)
        return
    release_local_models()  # the previous model's engine, before this one loads (a no-op for the first)
    for s in splits:
        yield country_flow(config, s.country, s.train, s.test, run_id)


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
    """The whole experiment for the configured countries, once per base model (base_models); returns
    the run_id (several models: the study_id, each model's run_id is logged).

    tensor_parallel_size: sets vllm.tensor_parallel_size of every vLLM model (`make run` passes
    the GPUs each gpu worker owns). country_timeout_hours: how long a fanned-out country (or a
    search, or the chat step) may take before it is cancelled and fails (a batch: that many times
    its countries or searches). gpu_workers: how many gpu workers a
    fanned-out run shares its countries among, one batch (one engine) each; None: the workers of the
    `gpu` pool that are online now. Several base models run one after another (model-major): a
    model's batches all finish before the next model's start, so a gpu worker keeps one model's
    engine for its whole batch of countries (persona_icm/batches.py, engine_start_bound)."""
    log = get_run_logger()
    config = build_checked_config(preset, with_tensor_parallel_size(overrides, tensor_parallel_size))
    checked = check_inputs(config, models_here=not fan_out)
    warehouse = Path(config.warehouse_path).resolve()
    timeout = country_timeout_hours * 3600
    timings: dict[str, float] = {}
    started_at, clock = datetime.now(UTC), time.perf_counter()

    ingest_goqa(checked.goqa, warehouse)
    dataset_id = write_claims_and_splits(checked.dataset, warehouse)
    code = code_version()
    runs = [ModelRun(c, run_id_for(c, dataset_id, code), {}) for c in config.model_configs()]
    study_id = study_id_for([r.run_id for r in runs])
    splits = list(checked.splits.values())  # data.countries, or the countries 'all' selected
    timings["data"] = time.perf_counter() - clock
    for r in runs:
        log.info("run %s (%s): %s", r.run_id, model_name(r.config.base_model), {s.country: (len(s.train), len(s.test)) for s in splits})
        r.row = run_row(r.run_id, r.config, dataset_id, flow_run.get_id(), "running", started_at=started_at,
                        countries=[s.country for s in splits], study_id=study_id)
        record_run(warehouse, r.row)

    try:
        workers = None
        if fan_out:
            workers = gpu_workers if gpu_workers is not None else online_gpu_workers()
            sizes = [SplitSize(s.country, len(s.train), len(s.test)) for s in splits]
            seeds = [icm.seed for icm in config.icm.searches()]
            starts = engine_starts(study_plans(sizes, seeds, workers, len(runs)))
            log.info("%d base model(s) on %d gpu worker(s), model after model: %d base-model engine start(s), bound %d",
                     len(runs), workers, starts, engine_start_bound(len(splits), len(seeds), workers, len(runs)))
        with_chat = bool(chat_methods(config.eval.methods))
        for r in runs:  # each country is stored as it comes back, so the parent holds at most one batch's results
            for result in countries_of_model(r.config, splits, r.run_id, fan_out, timeout, workers, study=len(runs) > 1):
                persist_country(warehouse, r.run_id, result.country, result.searches, result.evaluations,
                                config.eval.bootstrap_samples, config.eval.seed, diagnoses=result.diagnoses,
                                chat_follows=with_chat)
        timings["countries"] = time.perf_counter() - clock - timings["data"]
        chat = chat_baseline(runs[-1].config, splits, runs[-1].run_id, fan_out, timeout) if with_chat else {}
        timings["chat"] = time.perf_counter() - clock - timings["data"] - timings["countries"]
        for r in runs:
            for country, evaluations in chat_for_run(chat, r.run_id, computed_here=r is runs[-1]).items():
                persist_chat(warehouse, r.run_id, country, evaluations, config.eval.bootstrap_samples, config.eval.seed)
            aggregate_countries(warehouse, r.run_id, config.eval.bootstrap_samples, config.eval.seed)
    except BaseException:
        for r in runs:
            record_run(warehouse, {**r.row, "status": "failed", "finished_at": datetime.now(UTC)})
        raise
    timings["total"] = time.perf_counter() - clock
    for r in runs:  # after every run is recorded complete: the reports' headers show that
        record_run(warehouse, {**r.row, "status": "completed", "finished_at": datetime.now(UTC), "timings": timings})
    for r in runs:
        html = report(warehouse, r.run_id)
        log.info("run %s (%s) completed: report %s, warehouse %s", r.run_id, model_name(r.config.base_model), html, warehouse)
    if len(runs) == 1:
        return runs[0].run_id
    html = study_report(warehouse, study_id)
    log.info("study %s completed (%d base models): report %s", study_id, len(runs), html)
    return study_id
