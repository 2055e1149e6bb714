"""Flow `persona-icm`: data prep, each country (search + evaluation), persist, report.

Deploy it by module path (`flows.persona_icm:persona_icm`), never by file path: as a script this
file would shadow the package `persona_icm`.

Parameters: a preset (seed, paper, smoke) and nested overrides of the run config (editable in
the Prefect UI); `fan_out=True` sends each country to the deployment
`persona-icm-country/country` (gpu pool, one worker per GPU) and waits for all of them.
Only this flow's process writes the warehouse.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from flows.country import CountryResult, country_flow
from persona_icm.claims import CountrySplit
from persona_icm.config import RunConfig
from persona_icm.preflight import Preflight, build_checked_config, check_run
from tasks.data import build_claims_and_splits, ingest_goqa, load_country_split
from tasks.persist import aggregate_countries, code_version, persist_country, record_run, run_row
from tasks.report import report

COUNTRY_DEPLOYMENT = "persona-icm-country/country"


def run_id_for(config: RunConfig, dataset_id: str, code: str) -> str:
    """Same config, data and code -> same run_id, so a re-run replaces its rows."""
    digest = hashlib.sha256(json.dumps([config.model_dump(mode="json"), dataset_id, code], sort_keys=True).encode())
    return f"{config.preset}-{digest.hexdigest()[:12]}"


@task(name="check-inputs", cache_policy=NO_CACHE, retries=0)
def check_inputs(config: RunConfig) -> Preflight:
    """GOQA file, selection, config values, models and prompt length, before anything is written
    (persona_icm.preflight). No retries: waiting does not fix a bad input."""
    checked = check_run(config)
    get_run_logger().info("inputs ok: longest prompt %s tokens (window %s)", checked.longest_prompt, checked.window)
    return checked


@task(name="run-country-deployment")
def run_country_remotely(config: RunConfig, split: CountrySplit, run_id: str) -> CountryResult:
    """Run one country on a gpu worker through the country deployment; wait for its result."""
    child = run_deployment(
        COUNTRY_DEPLOYMENT,
        parameters={"config": config.model_dump(mode="json"), "country": split.country,
                    "train": split.train, "test": split.test, "run_id": run_id},
        timeout=None,
    )  # fmt: skip
    if not child.state.is_completed():
        raise RuntimeError(f"country run {child.name} for {split.country} ended {child.state.name}")
    return child.state.result()


@flow(name="persona-icm", log_prints=True)
def persona_icm(
    preset: Literal["seed", "paper", "smoke"] = "smoke",
    overrides: dict[str, Any] | None = None,
    fan_out: bool = False,
) -> str:
    """The whole experiment for the configured countries; returns the run_id."""
    log = get_run_logger()
    config = build_checked_config(preset, overrides)
    check_inputs(config)
    warehouse = Path(config.warehouse_path).resolve()
    timings: dict[str, float] = {}
    started_at, clock = datetime.now(UTC), time.perf_counter()

    source = ingest_goqa(config.data, warehouse)
    dataset_id = build_claims_and_splits(config.data, source, warehouse)
    run_id = run_id_for(config, dataset_id, code_version())
    splits = [load_country_split(dataset_id, country, warehouse) for country in config.data.countries]
    timings["data"] = time.perf_counter() - clock
    log.info("run %s: %s", run_id, {s.country: (len(s.train), len(s.test)) for s in splits})
    row = run_row(run_id, config, dataset_id, flow_run.get_id(), "running", started_at=started_at)
    record_run(warehouse, row)

    try:
        if fan_out:
            futures = [run_country_remotely.submit(config, split, run_id) for split in splits]
            results = [f.result() for f in futures]
        else:
            results = [country_flow(config, s.country, s.train, s.test, run_id) for s in splits]
        timings["countries"] = time.perf_counter() - clock - timings["data"]
        for result in results:
            persist_country(
                warehouse, run_id, result.country, config.icm.seed, result.search, result.evaluations,
                config.eval.bootstrap_samples, config.eval.seed,
            )  # fmt: skip
        aggregate_countries(warehouse, run_id, config.eval.bootstrap_samples, config.eval.seed)
        html = report(warehouse, run_id)
    except BaseException:
        record_run(warehouse, {**row, "status": "failed", "finished_at": datetime.now(UTC)})
        raise
    timings["total"] = time.perf_counter() - clock
    record_run(warehouse, {**row, "status": "completed", "finished_at": datetime.now(UTC), "timings": timings})
    log.info("run %s completed: report %s, warehouse %s", run_id, html, warehouse)
    return run_id
