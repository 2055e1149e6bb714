"""Data preparation tasks: GOQA -> warehouse -> claims and splits (persona_icm.goqa, .claims)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from persona_icm import claims, goqa
from persona_icm.claims import CountrySplit
from persona_icm.config import DataConfig
from persona_icm.warehouse import open_warehouse


@task(name="ingest-goqa", cache_policy=NO_CACHE)
def ingest_goqa(data: DataConfig, warehouse_path: Path) -> str:
    """Load the GOQA CSV (local path, $GOQA_PATH or the hub download) into the warehouse; its sha256."""
    path = goqa.resolve_goqa_path(data.goqa_path)
    with open_warehouse(warehouse_path) as wh:
        report = goqa.ingest_goqa(wh, path)
    get_run_logger().info(
        "GOQA %s (%s): %d questions, %d selections%s", report.origin, report.source_sha256[:12],
        report.n_questions, report.n_selections, "" if report.loaded else " (already ingested)",
    )
    return report.source_sha256


@task(name="build-claims-and-splits", cache_policy=NO_CACHE)
def build_claims_and_splits(data: DataConfig, source_sha256: str, warehouse_path: Path) -> str:
    """Claims and question-level splits for `data`, written to the warehouse; the dataset_id.

    One task: the dataset_id fingerprints both, and claims.build_dataset builds them together.
    """
    with open_warehouse(warehouse_path) as wh:
        questions, selections = goqa.load_goqa(wh, source_sha256)
        dataset = claims.build_dataset(questions, selections, data, source_sha256)
        claims.write_dataset(wh, dataset)
    get_run_logger().info("dataset %s: %s", dataset.dataset_id, dataset.report.get("split_claims"))
    return dataset.dataset_id


@task(name="load-country-split", cache_policy=NO_CACHE)
def load_country_split(dataset_id: str, country: str, warehouse_path: Path) -> CountrySplit:
    with open_warehouse(warehouse_path) as wh:
        split = claims.load_country_split(wh, dataset_id, country)
    if not split.train or not split.test:
        raise ValueError(f"{country}: {len(split.train)} train and {len(split.test)} test claims; both must be non-empty")
    return split
