"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture(scope="session")
def harness(tmp_path_factory):
    """A Prefect test server with its own PREFECT_HOME and result storage (no leaks between runs)."""
    home = tmp_path_factory.mktemp("prefect_home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PERSONA_ICM_RESULTS"] = str(home / "results")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    for name in [m for m in sys.modules if m.split(".")[0] in ("tasks", "flows")]:
        sys.modules.pop(name)  # result storage is read when tasks and flows are defined (tasks/storage.py)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        from prefect.settings import PREFECT_API_URL

        yield PREFECT_API_URL.value()
