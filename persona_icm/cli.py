"""`persona-icm` query commands: list runs, query the warehouse, rebuild a report.

    persona-icm runs
    persona-icm sql "select * from results_by_country order by all"
    persona-icm sql warehouse/queries/latest_run_summary.sql
    persona-icm report RUN_ID              # or a STUDY_ID: the study's report
    persona-icm plan --preset seed         # the searches' model work and GPU-hours, no model loaded
    persona-icm plan --preset world --set 'base_models=[{"name": "meta-llama/Llama-3.1-8B"}, {"name": "meta-llama/Llama-3.1-70B"}]'
                                           # a study: the same per base model

The installed `persona-icm` command (flows/cli.py) adds `run`, which executes the Prefect flow;
this module stays free of Prefect.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.table import Table

from persona_icm.charts import write_report, write_study_report
from persona_icm.config import PRESET_NAMES
from persona_icm.gpus import use_spawn
from persona_icm.run_status import RunInProgress, runs_with_live_status
from persona_icm.warehouse import DEFAULT_PATH, WarehouseLocked, open_warehouse

# Piped output (not a terminal) gets whole columns instead of rich's 80-column wrapping.
console = Console() if sys.stdout.isatty() else Console(width=1000)
errors = Console(stderr=True, soft_wrap=True, highlight=False)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["icm.iterations=50", "data.countries=[\"France\"]"] -> nested dict; values parsed as JSON
    when they are JSON, else kept as text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides a command's flags give (the one place they are assembled): its --set
    items, --goqa-path as data.goqa_path, and --warehouse as warehouse_path when not the default."""
    overrides = parse_overrides(args.set)
    if args.goqa_path:
        overrides.setdefault("data", {})["goqa_path"] = args.goqa_path
    if args.warehouse != str(DEFAULT_PATH):
        overrides["warehouse_path"] = args.warehouse
    return overrides


def add_config_arguments(command: argparse.ArgumentParser, default_preset: str) -> None:
    """--preset, --set and --goqa-path: the flags of a command that builds a run's config."""
    command.add_argument("--preset", default=default_preset, choices=PRESET_NAMES)
    command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, dotted key; repeatable")
    command.add_argument("--goqa-path", help="local GOQA CSV (default: $GOQA_PATH, else the hub download)")


def print_frame(frame: pl.DataFrame, title: str | None = None) -> None:
    table = Table(title=title, show_lines=False)
    for name, dtype in frame.schema.items():
        table.add_column(name, justify="right" if dtype.is_numeric() else "left")
    for row in frame.iter_rows():
        table.add_row(*("" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    console.print(table)


def diagnosis_lines(wh, run_id: str) -> list[str]:
    """One line per (country, ICM seed) of the run: the verdict of view icm_diagnosis_verdict, with its numbers."""
    rows = wh.sql("SELECT * FROM icm_diagnosis_verdict WHERE run_id = ? ORDER BY country, icm_seed", [run_id])
    lines = []
    for r in rows.iter_rows(named=True):
        relation = "<" if r["U_icm"] < r["U_gold"] else ">="
        lines.append(
            f"{r['country']}, seed {r['icm_seed']}: {r['verdict']}: U(ICM) {r['U_icm']:.4f} {relation} U(gold) "
            f"{r['U_gold']:.4f} (P {r['P_icm']:.4f} vs {r['P_gold']:.4f}, I {r['I_icm']} vs {r['I_gold']}; "
            f"U(gold flipped) {r['U_flipped']:.4f}); ICM label accuracy {r['icm_label_accuracy']:.2f} on {r['claims']} claims; "
            f"gold's leave-one-out scores rank the right option first in {r['gold_ranked_first']} of {r['groups']} groups"
        )
    return lines


def study_runs(wh, study_or_run_id: str) -> list[dict[str, Any]]:
    """The runs of a study (or the one run of that run_id), smallest model first."""
    return wh.sql(
        "SELECT run_id, base_model, base_model_parameters FROM runs WHERE coalesce(study_id, run_id) = ? OR run_id = ? "
        "ORDER BY base_model_parameters NULLS LAST, base_model", [study_or_run_id, study_or_run_id],
    ).to_dicts()


def model_run_line(wh, run: dict[str, Any]) -> str:
    """'run R completed: base model M (P parameters): icm 0.712 [0.65, 0.77], golden ...' (countries pooled)."""
    rows = wh.sql("SELECT method, accuracy, ci_low, ci_high FROM headline WHERE run_id = ? AND country = 'ALL' ORDER BY method",
                  [run["run_id"]])
    if rows.height == 0:  # one country: its own row is the headline
        rows = wh.sql("SELECT method, accuracy, ci_low, ci_high FROM headline WHERE run_id = ? ORDER BY method", [run["run_id"]])
    size = "" if run["base_model_parameters"] is None else f" ({run['base_model_parameters'] / 1e9:.3g}B parameters)"
    accuracies = ", ".join(
        f"{r['method']} {r['accuracy']:.3f}" + ("" if r["ci_low"] is None else f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
        for r in rows.iter_rows(named=True)
    )
    return f"run {run['run_id']} completed: base model {run['base_model']}{size}: {accuracies}"


def cmd_runs(args: argparse.Namespace) -> None:
    with open_warehouse(args.warehouse, read_only=True) as wh:
        print_frame(
            runs_with_live_status(
                wh,
                "SELECT run_id, study_id, status, preset, base_model, chat_model, countries, started_at, finished_at,"
                " code_version, host, pid, pid_started FROM runs ORDER BY started_at DESC",
            ).drop("pid_started"),
            "runs",
        )


def cmd_sql(args: argparse.Namespace) -> None:
    query = Path(args.query).read_text() if args.query.endswith(".sql") and Path(args.query).is_file() else args.query
    with open_warehouse(args.warehouse, read_only=True) as wh:
        try:
            frame = wh.sql(query)
        except Exception as exc:  # a DuckDB parser/catalog/binder error: show it, not a traceback
            raise ValueError(f"query failed: {exc}") from exc
        print_frame(frame)


def cmd_report(args: argparse.Namespace) -> None:
    out = Path(args.out) if args.out else Path(args.warehouse).resolve().parent / "reports" / args.run_id
    with open_warehouse(args.warehouse, read_only=True) as wh:
        is_run = wh.scalar("SELECT count(*) FROM runs WHERE run_id = ?", [args.run_id])
        files = (write_report if is_run else write_study_report)(wh.sql, args.run_id, out)
    console.print(f"report: {files.html}")


def cmd_plan(args: argparse.Namespace) -> None:
    from persona_icm import cost
    from persona_icm.claims import left_out_line
    from persona_icm.preflight import build_checked_config, check_data

    config = build_checked_config(args.preset, config_overrides(args))
    _, dataset, splits = check_data(config)
    if dataset.selection is not None:
        console.print(left_out_line(dataset.selection))
    searches = [(country, icm) for country in splits for icm in config.icm.searches()]
    by_tokenizer: dict[tuple[str, str], list] = {}  # the searches' work depends on the model's tokens only
    models = []
    with console.status("") as status:
        for spec in config.base_models:
            encoder, counted_with = plan_encoder(spec)
            tokens_of = (encoder.tokenizer.name_or_path, spec.prompts.style)  # two models sharing a tokenizer: simulated once
            if tokens_of not in by_tokenizer:
                costs = []
                for i, (country, icm) in enumerate(searches, 1):
                    status.update(f"simulating search {i} of {len(searches)}: {country}, seed {icm.seed} ({counted_with})")
                    costs.append(cost.search_cost(splits[country].train, icm, encoder))
                by_tokenizer[tokens_of] = costs
            models.append((spec, counted_with, by_tokenizer[tokens_of]))
    if len(models) == 1:
        print_plan(config, models[0][2], models[0][1])
    else:
        print_study_plan(config, models)


def plan_encoder(spec):
    """The base model's prompt encoder from its tokenizer alone; SmolLM2's when that cannot be had
    here (a hub id without network). Returns (encoder, what counted the tokens)."""
    from persona_icm.prompts import PromptEncoder
    from persona_icm.scoring.models import load_tokenizer

    try:
        tokenizer, counted_with = load_tokenizer(spec.name), spec.name
    except (OSError, ValueError) as exc:
        fallback = "smollm2-135m-instruct"
        tokenizer = load_tokenizer(fallback)
        counted_with = f"{fallback} (the tokenizer of {spec.name!r} is not available here: {str(exc).splitlines()[0][:120]})"
    return PromptEncoder(tokenizer, "base", style=spec.prompts.style), counted_with


def print_plan(config, costs, counted_with: str) -> None:
    from persona_icm import cost

    def cap(c: int | None) -> str:
        return "unbounded" if c is None else f"{c // 1024}k"

    rows = []
    for c in [*costs, None]:
        part = costs if c is None else [c]
        row = {
            "country": "all" if c is None else c.country,
            "seed": "" if c is None else str(c.seed),
            "claims": sum(x.claims for x in part),
            "calls": sum(x.calls for x in part),
            "prompts": sum(x.prompts for x in part),
            "prompt tokens": sum(x.prompt_tokens for x in part),
        }
        for capacity in cost.CAPACITIES:
            row[f"prefilled @{cap(capacity)}"] = sum(x.prefilled[capacity] for x in part)
        rows.append(row)
    print_frame(pl.DataFrame(rows), f"ICM searches of preset {config.preset}: model work (synthetic scores, simulated vLLM prefix cache)")
    total = rows[-1]
    hours = [
        {"KV cache": cap(capacity), **{f"H100-hours, {name}": f"{cost.gpu_hours(total[f'prefilled @{cap(capacity)}'], n):.2f}"
                                       for name, n in cost.MODEL_PARAMETERS.items()}}
        for capacity in cost.CAPACITIES
    ]
    print_frame(pl.DataFrame(hours), "prefill GPU time of all searches")
    console.print(
        f"tokens counted with {counted_with}; K={config.icm.iterations} iterations, {len(costs)} searches. "
        f"GPU-hours: 2 x parameters FLOPs per prefilled token at {cost.PREFILL_MFU:.0%} of an H100's "
        f"{cost.H100_BF16_FLOPS / 1e12:.0f} TFLOP/s (bf16 dense); a real model's trajectory differs (persona_icm/cost.py)."
    )


def print_study_plan(config, models) -> None:
    """A study's size per base model: its searches' model work (as print_plan's total) and the H100-hours of
    that model's parameter count (persona_icm/model_sizes.py) at each KV-cache capacity."""
    from persona_icm import cost
    from persona_icm.model_sizes import parameter_count

    rows, notes = [], []
    for spec, counted_with, costs in models:
        parameters, source = parameter_count(spec.name)
        row = {
            "base model": f"{spec.backend}:{spec.name}",
            "parameters": "unknown" if parameters is None else f"{parameters / 1e9:.3g}B ({source})",
            "searches": len(costs),
            "claims": sum(c.claims for c in costs),
            "prompts": sum(c.prompts for c in costs),
            "prompt tokens": sum(c.prompt_tokens for c in costs),
        }
        for capacity in cost.CAPACITIES:
            label = "unbounded" if capacity is None else f"{capacity // 1024}k"
            prefilled = sum(c.prefilled[capacity] for c in costs)
            row[f"prefilled @{label}"] = prefilled
            row[f"H100-hours @{label}"] = "" if parameters is None else f"{cost.gpu_hours(prefilled, parameters):.2f}"
        rows.append(row)
        notes.append(f"{spec.name}: tokens counted with {counted_with}" + ("" if parameters is not None else f"; no parameter count: {source}"))
    print_frame(pl.DataFrame(rows), f"study of preset {config.preset}: ICM searches per base model "
                                    "(synthetic scores, simulated vLLM prefix cache)")
    for note in notes:
        console.print(note, highlight=False)
    console.print(
        f"K={config.icm.iterations} iterations, {len(models[0][2])} searches per model. GPU-hours: 2 x parameters FLOPs per "
        f"prefilled token at {cost.PREFILL_MFU:.0%} of an H100's {cost.H100_BF16_FLOPS / 1e12:.0f} TFLOP/s (bf16 dense); "
        "the evaluations and engine starts come on top; a real model's trajectory differs (persona_icm/cost.py)."
    )


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="persona-icm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warehouse", default=str(DEFAULT_PATH), help="DuckDB file (default %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("runs", help="list runs in the warehouse").set_defaults(func=cmd_runs)

    sql = sub.add_parser("sql", help="run a query (or a .sql file) on the warehouse and print the table")
    sql.add_argument("query")
    sql.set_defaults(func=cmd_sql)

    rep = sub.add_parser("report", help="rebuild the HTML report and charts of a run (or of a study: its study_id)")
    rep.add_argument("run_id", help="a run_id, or a study_id (the study's report: accuracy against model size)")
    rep.add_argument("--out", help="output folder (default warehouse/reports/RUN_ID)")
    rep.set_defaults(func=cmd_report)

    plan = sub.add_parser("plan", help="estimate the ICM searches' model work and GPU-hours of a run (no model loaded)")
    add_config_arguments(plan, default_preset="seed")
    plan.set_defaults(func=cmd_plan)
    return parser, sub


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    errors.print(f"[yellow]warning:[/yellow] {message}")


def main(argv: list[str] | None = None, add_commands: Callable[[argparse._SubParsersAction], None] | None = None) -> None:
    """Parse `argv` and run the command; known errors print one line and exit 1 (no traceback).
    `add_commands` registers more subcommands (flows/cli.py adds `run`). vLLM engines this process
    starts use spawn unless VLLM_WORKER_MULTIPROC_METHOD is set (persona_icm.gpus.use_spawn)."""
    use_spawn()
    parser, sub = build_parser()
    if add_commands is not None:
        add_commands(sub)
    args = parser.parse_args(argv)
    warnings.showwarning = _one_line_warning
    try:
        args.func(args)
    except (FileNotFoundError, LookupError, ValueError, WarehouseLocked, RunInProgress) as exc:
        errors.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
