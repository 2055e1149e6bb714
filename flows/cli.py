"""The `persona-icm` command: the query commands of persona_icm.cli plus `run`, which executes
the Prefect flow in this process (no server needed: without PREFECT_API_URL it starts a temporary
one, flows/temporary_server.py).

    persona-icm run --preset smoke --goqa-path /path/goqa.csv --set icm.iterations=50
    persona-icm runs | sql QUERY | report RUN_ID

It lives here, next to the flows, so that persona_icm never imports Prefect.
`run` checks its inputs first (persona_icm.preflight): a bad input is one line on stderr and
exit code 1, before Prefect starts, a model loads or the warehouse is opened. SIGINT (Ctrl-C)
or SIGTERM stops a run: the flow records it failed, the temporary server and its folder are
removed, and one line names the run; exit code 128 + the signal's number (130, 143).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import duckdb

from persona_icm import cli
from persona_icm.config import RunConfig
from persona_icm.preflight import build_checked_config, check_run
from persona_icm.run_status import run_of_this_process
from persona_icm.warehouse import WarehouseLocked, open_warehouse


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived. Raised in the main thread (Prefect's flow engine turns a SIGTERM
    into its own exception first and sends it again once the flow has unwound), so the flow
    records the run as failed and Prefect its runs as crashed before the process exits."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def cmd_run(args: argparse.Namespace) -> None:
    overrides = cli.config_overrides(args)
    config = build_checked_config(args.preset, overrides)
    for model_config in config.model_configs():  # each base model of a study (the data is read once, cached)
        check_run(model_config)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, raise_interrupted)
    # The temporary Prefect server a run without PREFECT_API_URL starts is this project's: offline,
    # its analytics would only log "Failed to send telemetry" errors.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        from flows.temporary_server import temporary_prefect_server

        with temporary_prefect_server():
            from flows.experiment import persona_icm

            run_id = persona_icm(preset=args.preset, overrides=overrides)
    except Interrupted as stop:
        cli.errors.print(interrupted_line(config, stop.signum))
        sys.exit(128 + stop.signum)
    except Exception as exc:  # Prefect has logged the traceback; the shell gets one line and exit 1
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        cli.errors.print(f"[red]error:[/red] run failed: {type(exc).__name__}: {first}")
        sys.exit(1)
    with open_warehouse(config.warehouse_path, read_only=True) as wh:
        runs = cli.study_runs(wh, run_id)
        for run in runs:
            cli.console.print(cli.model_run_line(wh, run), highlight=False)
            for line in cli.diagnosis_lines(wh, run["run_id"]):
                cli.console.print(f"ICM diagnosis, {line}", highlight=False)
    if len(runs) > 1:
        report = cli.Path(config.warehouse_path).resolve().parent / "reports" / run_id / "report.html"
        cli.console.print(f"study [bold]{run_id}[/bold] completed: {len(runs)} base models; report {report}")


def interrupted_line(config: RunConfig, signum: int) -> str:
    """What was interrupted (the run this process recorded in the warehouse, if any) and how to go on."""
    name = signal.Signals(signum).name
    try:
        with open_warehouse(config.warehouse_path, read_only=True, lock_timeout=10) as wh:
            run = run_of_this_process(wh)
    except (OSError, WarehouseLocked, duckdb.Error):
        run = None
    if run is None:
        return f"interrupted by {name} before the run (preset {config.preset}) was recorded; run the same command again to start it"
    if run["status"] == "completed":
        return f"interrupted by {name} after run {run['run_id']} (preset {run['preset']}) completed; `persona-icm report {run['run_id']}` rebuilds its report"
    return (f"interrupted by {name}: run {run['run_id']} (preset {run['preset']}) stopped; "
            "run the same command again to resume from its last checkpoint")


def add_run(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the persona-icm flow in this process")
    cli.add_config_arguments(run, default_preset="smoke")
    run.set_defaults(func=cmd_run)


def main(argv: list[str] | None = None) -> None:
    cli.main(argv, add_commands=add_run)


if __name__ == "__main__":
    main()
