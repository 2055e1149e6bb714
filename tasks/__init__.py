"""Thin Prefect tasks over persona_icm: caching, retries, tags, logging, artifacts.

`scorers` (the process's scorer, the API key from a Prefect Secret block), `retry` (which failures
are retried), `progress` (progress artifacts and log lines on the run a user started), then one
module per step of a run."""

import logging

# The library's own notices (a resumed search, a damaged checkpoint, a locked warehouse) reach the
# flow run logs through pyproject's [tool.prefect.logging] extra_loggers; INFO included.
logging.getLogger("persona_icm").setLevel(logging.INFO)
