"""The `persona-icm` command: the query commands of persona_icm.cli plus `run`, which executes
the Prefect flow in this process (no server needed; Prefect starts a temporary one if none is set).

    persona-icm run --preset smoke --goqa-path /path/goqa.csv --set icm.iterations=50
    persona-icm runs | sql QUERY | report RUN_ID

It lives here, next to the flows, so that persona_icm never imports Prefect.
`run` checks its inputs first (persona_icm.preflight): a bad input is one line on stderr and
exit code 1, before Prefect starts, a model loads or the warehouse is opened.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from persona_icm import cli
from persona_icm.config import PRESET_NAMES
from persona_icm.preflight import build_checked_config, check_run


def cmd_run(args: argparse.Namespace) -> None:
    overrides = cli.parse_overrides(args.set)
    if args.goqa_path:
        overrides.setdefault("data", {})["goqa_path"] = args.goqa_path
    if args.warehouse != str(cli.DEFAULT_PATH):
        overrides["warehouse_path"] = args.warehouse
    check_run(build_checked_config(args.preset, overrides))

    use_own_prefect_database()
    # The temporary Prefect server a run without PREFECT_API_URL starts is this project's: offline,
    # its analytics would only log "Failed to send telemetry" errors.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.experiment import persona_icm

    try:
        run_id = persona_icm(preset=args.preset, overrides=overrides)
    except Exception as exc:  # Prefect has logged the traceback; the shell gets one line and exit 1
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        cli.errors.print(f"[red]error:[/red] run failed: {type(exc).__name__}: {first}")
        sys.exit(1)
    cli.console.print(f"run [bold]{run_id}[/bold] completed")


def use_own_prefect_database() -> Path | None:
    """Without a Prefect server to talk to, Prefect starts a temporary one per process, and by
    default every one of them writes the same SQLite file under PREFECT_HOME: two runs at once then
    fail with "database is locked". Give this process's temporary server a database of its own,
    removed at exit (results, caches and checkpoints live elsewhere; the warehouse has every
    number). Returns its folder, or None when a server is configured."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or "PREFECT_SERVER_DATABASE_CONNECTION_URL" in os.environ:
        return None
    folder = Path(tempfile.mkdtemp(prefix="persona-icm-prefect-"))
    os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{folder / 'prefect.db'}"
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # after the server stops: atexit runs LIFO
    return folder


def add_run(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the persona-icm flow in this process")
    run.add_argument("--preset", default="smoke", choices=PRESET_NAMES)
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, dotted key; repeatable")
    run.add_argument("--goqa-path", help="local GOQA CSV (default: $GOQA_PATH, else the hub download)")
    run.set_defaults(func=cmd_run)


def main(argv: list[str] | None = None) -> None:
    cli.main(argv, add_commands=add_run)


if __name__ == "__main__":
    main()
