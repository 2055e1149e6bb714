"""Data tasks: the GOQA file and the claims and splits that preflight built, written to the warehouse.

The file is parsed once per process (persona_icm.preflight); these tasks write what it parsed.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from persona_icm import claims, goqa
from persona_icm.warehouse import open_warehouse


@task(name="ingest-goqa", cache_policy=NO_CACHE)
def ingest_goqa(table: goqa.GoqaTable, warehouse_path: Path) -> str:
    """The parsed GOQA file into the warehouse (nothing when that file is there already); its sha256."""
    with open_warehouse(warehouse_path) as wh:
        report = goqa.ingest_goqa(wh, table)
    get_run_logger().info(
        "GOQA %s (%s): %d questions, %d selections%s", report.origin, report.source_sha256[:12],
        report.n_questions, report.n_selections, "" if report.loaded else " (already ingested)",
    )
    return report.source_sha256


@task(name="write-claims-and-splits", cache_policy=NO_CACHE)
def write_claims_and_splits(dataset: claims.Dataset, warehouse_path: Path) -> str:
    """The claims and question-level splits of the run into the warehouse; the dataset_id."""
    with open_warehouse(warehouse_path) as wh:
        claims.write_dataset(wh, dataset)
    log = get_run_logger()
    if dataset.selection is not None:
        log.info("%s (table dataset_countries, view countries_left_out)", claims.left_out_line(dataset.selection))
    log.info("dataset %s: %s", dataset.dataset_id, dataset.report.get("split_claims"))
    return dataset.dataset_id
