"""Fixtures shared by the Prefect flow tests (test_flows.py, test_crash_flow.py)."""

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
    sys.modules.pop("tasks.common", None)  # RESULTS_DIR is read at import
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        from prefect.settings import PREFECT_API_URL

        yield PREFECT_API_URL.value()
