"""The report task: charts and HTML from the warehouse views, plus the run's Prefect artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from persona_icm.charts import (
    AGGREGATE,
    HEADLINE_SQL,
    MODEL_COMPARISON_SQL,
    write_report,
    write_study_report,
)
from persona_icm.warehouse import open_warehouse


def artifact_key(*parts: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    text = "-".join(parts).lower()
    return "".join(ch if ch.isalnum() and ch.isascii() else "-" for ch in text).strip("-")


def reports_dir(warehouse_path: Path) -> Path:
    return Path(warehouse_path).resolve().parent / "reports"


@task(name="report", cache_policy=NO_CACHE)
def report(warehouse_path: Path, run_id: str) -> Path:
    """warehouse/reports/<run_id>/ (PNG, SVG, report.html); a method x country table artifact
    (accuracy with 95% CI) and a markdown artifact linking the report."""
    out_dir = reports_dir(warehouse_path) / run_id
    with open_warehouse(warehouse_path) as wh:
        files = write_report(wh.sql, run_id, out_dir)
        headline = wh.sql(HEADLINE_SQL, {"run_id": run_id, "aggregate": AGGREGATE})
        base_model = wh.scalar("SELECT base_model FROM runs WHERE run_id = ?", [run_id])
    countries = [c for c in headline["country"].unique(maintain_order=True).to_list() if c != AGGREGATE] + [AGGREGATE]
    table = []
    for method in headline["method"].unique(maintain_order=True).to_list():
        row = {"method": method}
        for country in countries:
            cell = headline.filter((headline["method"] == method) & (headline["country"] == country))
            if cell.height:
                r = cell.row(0, named=True)
                ci = "" if r["ci_low"] is None else f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
                row[country] = f"{r['accuracy']:.3f}{ci}"
        table.append(row)
    key = artifact_key("results", run_id)
    create_table_artifact(table, key=key, description=f"Test claim accuracy (95% CI), run {run_id}, base model {base_model}, headline setting")
    links = "\n".join(f"- {name}: [{png.name}]({png.resolve().as_uri()}), [{svg.name}]({svg.resolve().as_uri()})" for name, (png, svg) in files.charts.items())
    create_markdown_artifact(
        f"# persona-icm run `{run_id}`\n\nReport: [{files.html.resolve()}]({files.html.resolve().as_uri()})\n\n"
        f"Charts:\n{links}\n\nWarehouse: `{Path(warehouse_path).resolve()}`; try "
        f"`persona-icm sql \"select * from results_by_country where run_id = '{run_id}' order by all\"`.\n",
        key=artifact_key("report", run_id),
        description=f"Report of run {run_id}",
    )
    return files.html


@task(name="study-report", cache_policy=NO_CACHE)
def study_report(warehouse_path: Path, study_id: str) -> Path:
    """warehouse/reports/<study_id>/ (the model-size chart, report.html) and a table artifact: each method's
    pooled accuracy (95% CI) per base model."""
    out_dir = reports_dir(warehouse_path) / study_id
    with open_warehouse(warehouse_path) as wh:
        files = write_study_report(wh.sql, study_id, out_dir)
        comparison = wh.sql(MODEL_COMPARISON_SQL, {"study_id": study_id})
    table = [
        {"base model": r["base_model"], "parameters": r["base_model_parameters"], "method": r["method"],
         "accuracy": f"{r['accuracy']:.3f}" + ("" if r["ci_low"] is None else f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")}
        for r in comparison.iter_rows(named=True)
    ]
    create_table_artifact(table, key=artifact_key("study", study_id),
                          description=f"Test claim accuracy (95% CI), countries pooled, per base model: study {study_id}")
    return files.html
