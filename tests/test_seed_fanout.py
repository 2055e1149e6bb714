"""A fanned-out run with two ICM seeds, on the session's Prefect test server: every (country, seed)
search is its own flow run of `persona-icm-search/search`, and each country's flow run then takes
its two searches from the task cache.

The children run in a separate process that serves the `search` and `country` deployments with
Prefect's Runner (`prefect.serve`, two runs at a time): real flow runs in their own processes, as a
gpu-pool worker would start them, with the tiny random Llama on the hf backend.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
COUNTRIES = ["United States", "France"]
SERVE = """
from prefect import serve
from prefect.deployments.runner import EntrypointType
from flows.country import country_flow
from flows.search import search_flow
by_module = EntrypointType.MODULE_PATH  # as prefect.yaml names them: results read back as flows.country...
serve(search_flow.to_deployment(name="search", entrypoint_type=by_module),
      country_flow.to_deployment(name="country", entrypoint_type=by_module), limit=2)
"""


@pytest.fixture
def children(harness, tmp_path):
    """A process serving the search and country deployments on the test server."""
    env = {**os.environ, "PREFECT_API_URL": harness, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1",
           "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-c", SERVE], cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        yield log
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def wait_for_deployments(names: list[str], log: Path, timeout: float = 120) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        for name in names:
            while True:
                try:
                    client.read_deployment_by_name(name)
                    break
                except Exception:
                    assert time.monotonic() < deadline, f"{name} not served within {timeout:.0f} s:\n{log.read_text()[-3000:]}"
                    time.sleep(1)


def test_each_country_and_seed_searches_in_its_own_flow_run_and_the_countries_take_them_from_the_cache(children, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.experiment import persona_icm
    from persona_icm.warehouse import open_warehouse
    from tests.goqa_fixtures import make_rows, write_goqa
    from tests.helpers import deployment_runs, icm_task_states
    from tests.tiny_model import write_tiny_model

    warehouse = tmp_path / "warehouse" / "persona_icm.duckdb"
    overrides = {
        "data": {"goqa_path": str(write_goqa(tmp_path / "goqa.csv", make_rows(24, 4, COUNTRIES))), "countries": COUNTRIES,
                 "train_cap": 12, "test_cap": 8},
        "base_model": {"backend": "hf", "name": str(write_tiny_model(tmp_path / "tiny-llama"))},
        "icm": {"num_seed": 4, "iterations": 6, "seeds": [0, 1]},
        "eval": {"eval_repeats": 2, "demo_sizes": [4], "bootstrap_samples": 100, "methods": ["icm", "random_matched", "zero_shot_base"]},
        "warehouse_path": str(warehouse),
    }
    wait_for_deployments(["persona-icm-search/search", "persona-icm-country/country"], children)
    start = time.monotonic()
    state = persona_icm(preset="smoke", overrides=overrides, fan_out=True, country_timeout_hours=0.25, return_state=True)
    took = time.monotonic() - start
    assert state.is_completed(), f"{state}\n{children.read_text()[-4000:]}"
    run_id = state.result()

    with get_client(sync_client=True) as client:
        searches = deployment_runs(client, "persona-icm-search/search")
        countries = deployment_runs(client, "persona-icm-country/country")
        assert sorted(r.name for r in searches) == sorted(f"{c}, seed {s}" for c in COUNTRIES for s in (0, 1))
        assert {r.state_name for r in searches + countries} == {"Completed"}
        assert icm_task_states(client, [r.id for r in searches]) == ["Completed"] * 4
        assert icm_task_states(client, [r.id for r in countries]) == ["Cached"] * 4
        for country in countries:  # a country starts only after its own searches have ended
            own = [r for r in searches if r.name.startswith(country.name + ",")]
            assert country.start_time >= max(r.end_time for r in own), country.name
        overlapping = [(a.name, b.name) for a in searches for b in searches
                       if a.name < b.name and a.start_time < b.end_time and b.start_time < a.end_time]
        assert overlapping, "no two searches ran at once on the two-run server"

    with open_warehouse(warehouse, read_only=True) as wh:
        seeds = wh.sql("SELECT country, list(DISTINCT icm_seed ORDER BY icm_seed) AS s FROM icm_labels WHERE run_id = ? "
                       "GROUP BY 1 ORDER BY 1", [run_id])
        assert seeds["s"].to_list() == [[0, 1], [0, 1]]
        icm = wh.sql("SELECT n_seeds FROM results_by_country WHERE run_id = ? AND method = 'icm' AND experiment = 'main'", [run_id])
        assert icm["n_seeds"].to_list() == [2, 2]
    print(f"\ntwo seeds fanned out: 4 search runs, 2 country runs in {took:.0f} s; searches at once: {overlapping}")
