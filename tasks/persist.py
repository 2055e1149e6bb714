"""Warehouse writes of a run. Only the flow process that owns the warehouse runs these.

Every write is one transaction per (run, country, step) that replaces that key's rows, so a
retried or re-run flow never duplicates. Lock contention (another process holding the file) is
waited out, with backoff, by open_warehouse itself.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.states import Crashed

from persona_icm.config import RunConfig
from persona_icm.icm.diagnosis import ENERGY_SCHEMA, GROUP_SCHEMA
from persona_icm.methods import stored_methods
from persona_icm.metrics import write_aggregate, write_evaluation, write_intervals
from persona_icm.model_sizes import parameter_count
from persona_icm.run_status import RUNNING, claim_run, finish_run
from persona_icm.scoring.base import number_calls
from persona_icm.warehouse import Warehouse, open_warehouse, write_results
from tasks.diagnosis import DiagnosisResult
from tasks.evaluation import MethodResult
from tasks.scorers import model_name
from tasks.search import SearchResult

ROOT = Path(__file__).resolve().parent.parent  # the checkout, whose commit is the code version

def code_version() -> str:
    """git commit of the checkout, with "-dirty" when it has uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def run_row(run_id: str, config: RunConfig, dataset_id: str, flow_run_id: str | None, status: str, **extra: Any) -> dict[str, Any]:
    """The `runs` row of a run of config.base_model; study_id (extra): the study it is part of (default: itself)."""
    parameters, source = parameter_count(config.base_model.name)
    return {
        "run_id": run_id,
        "flow_run_id": flow_run_id,
        "preset": config.preset,
        "config_json": config.model_dump_json(),
        "base_model": model_name(config.base_model),
        "chat_model": model_name(config.chat_model),
        "countries": list(extra.pop("countries", config.data.countries)),
        "dataset_id": dataset_id,
        "code_version": code_version(),
        "started_at": extra.pop("started_at", datetime.now(UTC)),
        "status": status,
        "study_id": extra.pop("study_id", run_id),
        "base_model_parameters": parameters,
        "base_model_parameters_source": source,
        **extra,
    }


@task(name="record-run", cache_policy=NO_CACHE)
def record_run(warehouse_path: Path, row: dict[str, Any]) -> None:
    """Insert or replace the run's row in `runs` (status, timings, finish time).

    A `running` row claims the run for this process (run_status.claim_run: runs whose process
    died are marked interrupted; a run_id a live process is running is refused)."""
    row = dict(row)
    if isinstance(row.get("timings"), dict):
        row["timings"] = json.dumps(row["timings"])
    with open_warehouse(warehouse_path) as wh:
        if row["status"] == RUNNING:
            interrupted = claim_run(wh, row)
        else:
            finish_run(wh, row)
            interrupted = {}
    if interrupted:
        get_run_logger().warning("runs whose process is gone, marked interrupted: %s", ", ".join(interrupted))
        mark_crashed([f for f in interrupted.values() if f is not None], f"its process died; seen by run {row['run_id']}")


def mark_crashed(flow_run_ids: list[str], message: str) -> None:
    """Put the flow runs (and their subflows) of dead processes in Prefect's Crashed state, as a
    worker would for a process it started; best effort: the API being unreachable is only logged."""
    try:
        with get_client(sync_client=True) as client:
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=flow_run_ids))
            )
            runs = [client.read_flow_run(f) for f in flow_run_ids] + list(children)
            for run in runs:
                if run.state is not None and not run.state.is_final():
                    client.set_flow_run_state(run.id, Crashed(message=message), force=True)
    except Exception as exc:  # noqa: BLE001 - bookkeeping of other runs must not fail this one
        get_run_logger().warning("could not mark the dead flow runs %s Crashed in Prefect: %s", flow_run_ids, exc)


@task(name="persist-country", cache_policy=NO_CACHE)
def persist_country(
    warehouse_path: Path, run_id: str, country: str, searches: dict[int, SearchResult],
    evaluations: list[MethodResult], bootstrap_samples: int, seed: int,
    diagnoses: dict[int, DiagnosisResult] | None = None, chat_follows: bool = False,
) -> dict[str, dict[str, int]]:
    """Write one country as soon as its base model is done with it: its searches and their diagnoses
    (step icm, one icm_seed each), then its base-model methods' evaluation (step eval) and, unless the
    chat baseline follows (`chat_follows`: persist_chat then writes the intervals), their intervals."""
    def per_seed(frame_of, results) -> pl.DataFrame:
        return pl.concat([frame_of(r).with_columns(icm_seed=pl.lit(seed, pl.Int32)) for seed, r in sorted(results.items())],
                         how="vertical_relaxed")

    diagnoses = diagnoses or {}
    frames = {
        "icm_labels": per_seed(lambda s: s.labels, searches),
        "icm_trace": per_seed(lambda s: s.trace, searches),
        "model_calls": number_calls(pl.concat([r.calls for results in (searches, diagnoses) for _, r in sorted(results.items())],
                                              how="vertical_relaxed")),
    }
    for table, frame_of, schema in (("icm_diagnosis", lambda d: d.energies, ENERGY_SCHEMA),
                                    ("icm_diagnosis_groups", lambda d: d.groups, GROUP_SCHEMA)):
        empty = pl.DataFrame(schema=schema).with_columns(icm_seed=pl.lit(None, pl.Int32))
        frames[table] = per_seed(frame_of, diagnoses) if diagnoses else empty  # replaced either way
    written = {}
    with open_warehouse(warehouse_path) as wh:
        written["icm"] = write_results(wh, run_id, country, "icm", frames)
        written["eval"] = write_methods(wh, run_id, country, "eval", evaluations, bootstrap_samples, seed, intervals=not chat_follows)
    get_run_logger().info("%s persisted: %s", country, written)
    return written


@task(name="persist-chat", cache_policy=NO_CACHE)
def persist_chat(warehouse_path: Path, run_id: str, country: str, evaluations: list[MethodResult],
                 bootstrap_samples: int, seed: int) -> dict[str, int]:
    """Write one country's chat-model methods (step chat) beside its base-model methods, and the
    intervals of all of them."""
    with open_warehouse(warehouse_path) as wh:
        written = write_methods(wh, run_id, country, "chat", evaluations, bootstrap_samples, seed, intervals=True)
    get_run_logger().info("%s chat baseline persisted: %s", country, written)
    return written


def write_methods(wh: Warehouse, run_id: str, country: str, step: str, evaluations: list[MethodResult],
                  bootstrap_samples: int, seed: int, intervals: bool) -> dict[str, int]:
    """The rows of the evaluated methods (replacing those methods' rows only) and their model calls (of `step`)."""
    if not evaluations:
        return write_intervals(wh, run_id, country, bootstrap_samples, seed) if intervals else {}
    frames = {
        "predictions": pl.concat([e.predictions for e in evaluations], how="vertical_relaxed"),
        "demos": pl.concat([e.demos for e in evaluations], how="vertical_relaxed"),
        "model_calls": number_calls(pl.concat([e.calls for e in evaluations], how="vertical_relaxed")),
    }
    return write_evaluation(wh, run_id, country, frames, n_boot=bootstrap_samples, seed=seed, step=step,
                            methods=[m.name for e in evaluations for m in stored_methods(e.method)], intervals=intervals)


@task(name="aggregate-countries", cache_policy=NO_CACHE)
def aggregate_countries(warehouse_path: Path, run_id: str, bootstrap_samples: int, seed: int) -> int:
    """The intervals of the pooled countries (country 'ALL') from the run's rows in the warehouse."""
    with open_warehouse(warehouse_path) as wh:
        return write_aggregate(wh, run_id, n_boot=bootstrap_samples, seed=seed)
