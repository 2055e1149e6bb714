"""The temporary Prefect server of `persona-icm run` when no Prefect server is configured.

Left to itself, Prefect starts one on first use (SubprocessASGIServer) with a 20 s startup limit,
in the run's process group, on the SQLite file under PREFECT_HOME, and stops it at exit. Here it
is still Prefect's server, started before the flow and registered as the one every Prefect client
of this process uses, but:
- with a database of its own in a temporary folder (two runs at once on one SQLite file fail with
  "database is locked"), removed when the run ends;
- with a startup limit that fits a loaded machine (STARTUP_SECONDS), unless the user set one;
- in a process group of its own: Ctrl-C (SIGINT to the terminal's process group) or
  `kill -- -PGID` reach the run, not the server, so the flow engine can still record the
  interruption; then the run stops the server. On Linux the server also dies with the run
  when the run is killed outright (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import prefect
import prefect.main  # noqa: F401  (sets up Prefect's logging: its "Starting temporary server" line shows)
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import get_current_settings

STARTUP_SECONDS = 180  # single runs took up to 59 s to reach the flow on a loaded 2-core machine
DRAIN_SECONDS = 10  # for the logs and events Prefect still queues for the server
PR_SET_PDEATHSIG = 1


def die_with(parent: int) -> Callable[[], None] | None:
    """A Popen preexec_fn that makes the child receive SIGTERM when `parent` (the thread that
    starts it) dies; None where prctl does not exist (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only calls it

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)

    return preexec


class OwnGroupServer(SubprocessASGIServer):
    """Prefect's temporary server, started in a process group of its own that dies with this process."""

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        # Prefect's own command and environment (prefect.server.api.server, 3.x); only the Popen options differ.
        return subprocess.Popen(
            args=[sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
                  "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                  "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
                 **get_current_settings().to_environment_variables(exclude_unset=True)},
            process_group=0,
            preexec_fn=die_with(os.getpid()),
        )


def startup_seconds() -> int:
    """The user's PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (environment or profile), else STARTUP_SECONDS."""
    ephemeral = get_current_settings().server.ephemeral
    return ephemeral.startup_timeout_seconds if "startup_timeout_seconds" in ephemeral.model_fields_set else STARTUP_SECONDS


@contextmanager
def signals_ignored() -> Iterator[None]:
    """SIGINT and SIGTERM ignored: a second Ctrl-C does not cut the (bounded) cleanup short."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def temporary_prefect_server() -> Iterator[SubprocessASGIServer | None]:
    """Start the temporary server (own database folder, own process group) and yield it; at the
    end, however the block ends: send the logs and events Prefect still queues, stop the server,
    remove the folder, each bounded. Yields None when a server is configured (PREFECT_API_URL)
    or Prefect's ephemeral mode is off."""
    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        yield None
        return
    folder = None
    if "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in os.environ:
        folder = Path(tempfile.mkdtemp(prefix="persona-icm-prefect-"))
        os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{folder / 'prefect.db'}"
    server = OwnGroupServer()
    assert type(server) is OwnGroupServer, "a temporary Prefect server was started before this one"
    try:
        server.start(timeout=startup_seconds())
        yield server
    finally:
        with signals_ignored():
            stop(server)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)


def stop(server: SubprocessASGIServer) -> None:
    """Drain Prefect's log and event workers while the server can still take them, then stop it
    (SIGTERM, SIGKILL after 5 s)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    if server.running:
        for worker in (APILogWorker, EventsWorker):
            worker.drain_all(timeout=DRAIN_SECONDS)
    server.stop()
