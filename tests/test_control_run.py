"""The positive control as a user runs it: `persona-icm run --preset control` (real gemma-3-270m,
the known-answer questions, every method), then the checks docs/method.md "Positive control" names.

Slow (about 6 minutes on a 2-core CPU); .ci/run installs gemma-3-270m (`make models-gemma`) first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_control_run_recovers_the_known_answers(harness, tmp_path):
    from persona_icm.warehouse import open_warehouse

    warehouse = tmp_path / "warehouse" / "persona_icm.duckdb"
    log = tmp_path / "control.log"
    env = {**os.environ, "PREFECT_API_URL": harness, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "flows.cli", "--warehouse", str(warehouse), "run", "--preset", "control"]
    with log.open("w") as out:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=3600)
    assert done.returncode == 0, log.read_text()[-4000:]

    with open_warehouse(warehouse, read_only=True) as wh:
        rows = wh.sql("SELECT * FROM headline WHERE country <> 'ALL'")
    by_method = {row["method"]: row for row in rows.iter_rows(named=True)}
    icm, golden = by_method["icm"], by_method["golden"]
    # the model can be taught the answers in context: golden demonstrations are well above chance
    assert golden["group_ci_low"] > 0.5, golden
    # the search labels the training claims above chance (measured here: 0.75, 6 of 8 questions;
    # the 0.8 docs/method.md aims at is not reached at this model size)
    assert icm["demo_label_accuracy"] > 0.5, icm
    # its labels teach as well as the gold ones: within golden's interval, and above chance
    assert golden["group_ci_low"] <= icm["group_accuracy"], (icm, golden)
    assert icm["group_ci_low"] > 0.5, icm
