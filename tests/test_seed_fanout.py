"""A fanned-out run on the session's Prefect test server, its work shared among gpu workers in
batches (flows/batch.py, persona_icm/batches.py): with one gpu worker both countries run in one
batch on one engine; with two ICM seeds and more workers than countries every (country, seed)
search first runs in a batch of its own, and each country then takes its two searches from the
task cache; a study of two base models runs model after model, each model's countries in batches of
its own.

The batches run in a separate process that serves the `batch` deployment with Prefect's Runner
(`prefect.serve`, two runs at a time): real flow runs in their own processes, as a gpu-pool worker
would start them, with the tiny random Llama on the hf backend.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
COUNTRIES = ["United States", "France"]
SERVE = """
from prefect import serve
from prefect.deployments.runner import EntrypointType
from flows.batch import batch_flow
by_module = EntrypointType.MODULE_PATH  # as prefect.yaml names them: results read back as flows.country...
serve(batch_flow.to_deployment(name="batch", entrypoint_type=by_module), limit=2)
"""


@pytest.fixture
def children(harness, tmp_path):
    """A process serving the batch deployment on the test server."""
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


def run_fanned_out(tmp_path, children, icm: dict, methods: list[str], gpu_workers: int, base_models: list[dict] | None = None):
    from flows.experiment import persona_icm
    from persona_icm.tiny_model import write_tiny_model
    from tests.goqa_fixtures import make_rows, write_goqa

    warehouse = tmp_path / "warehouse" / "persona_icm.duckdb"
    overrides = {
        "data": {"goqa_path": str(write_goqa(tmp_path / "goqa.csv", make_rows(24, 4, COUNTRIES))), "countries": COUNTRIES,
                 "train_cap": 12, "test_cap": 8},
        "base_model": {"backend": "hf", "name": str(write_tiny_model(tmp_path / "tiny-llama"))},
        "icm": {"num_seed": 4, "iterations": 6, **icm},
        "eval": {"eval_repeats": 2, "demo_sizes": [4], "bootstrap_samples": 100, "methods": methods},
        "warehouse_path": str(warehouse),
    }
    if base_models:
        overrides = {**overrides, "base_model": base_models[0], "base_models": base_models}
    wait_for_deployments(["persona-icm-batch/batch"], children)
    since, start = datetime.now(UTC), time.monotonic()
    state = persona_icm(preset="smoke", overrides=overrides, fan_out=True, country_timeout_hours=0.25, gpu_workers=gpu_workers,
                        return_state=True)
    assert state.is_completed(), f"{state}\n{children.read_text()[-4000:]}"
    return state.result(), warehouse, time.monotonic() - start, since


def created_since(runs: list, since: datetime) -> list:
    """The flow runs of this test (the session's server also holds other tests' runs)."""
    return [r for r in runs if r.created >= since]


def test_one_gpu_worker_runs_every_country_in_one_batch_on_one_engine(children, tmp_path):
    from prefect.client.orchestration import get_client

    from persona_icm.warehouse import open_warehouse
    from tests.helpers import deployment_runs, engine_starts, flow_runs_named

    run_id, warehouse, took, since = run_fanned_out(tmp_path, children, {}, ["icm", "golden", "zero_shot_base"], gpu_workers=1)
    with get_client(sync_client=True) as client:
        (batch,) = created_since(deployment_runs(client, "persona-icm-batch/batch"), since)
        countries = created_since(flow_runs_named(client, "persona-icm-country"), since)
        assert batch.name == "United States, France" and batch.state_name == "Completed"
        # each country is still its own flow run (a subflow of the batch), with its own state
        assert sorted(r.name for r in countries) == sorted(COUNTRIES) and {r.state_name for r in countries} == {"Completed"}
        starts = engine_starts(client, [r.id for r in countries])
    assert len(starts) == 1, starts  # one model load for both countries (one per country before)
    with open_warehouse(warehouse, read_only=True) as wh:
        done = wh.sql("SELECT DISTINCT country FROM results_by_country WHERE run_id = ?", [run_id])["country"]
        assert sorted(done) == sorted(COUNTRIES)
    print(f"\none gpu worker: one batch of {len(countries)} countries, {len(starts)} engine start in {took:.0f} s: {starts}")


def test_each_seed_searches_in_a_batch_of_its_own_and_the_countries_take_them_from_the_cache(children, tmp_path):
    from prefect.client.orchestration import get_client

    from persona_icm.warehouse import open_warehouse
    from tests.helpers import deployment_runs, flow_runs_named, icm_task_states

    run_id, warehouse, took, since = run_fanned_out(tmp_path, children, {"seeds": [0, 1]}, ["icm", "random_matched", "zero_shot_base"],
                                             gpu_workers=4)
    with get_client(sync_client=True) as client:
        batches = created_since(deployment_runs(client, "persona-icm-batch/batch"), since)
        search_batches = [r for r in batches if r.name.startswith("searches: ")]
        country_batches = [r for r in batches if not r.name.startswith("searches: ")]
        searches = created_since(flow_runs_named(client, "persona-icm-search"), since)
        countries = created_since(flow_runs_named(client, "persona-icm-country"), since)
        assert sorted(r.name for r in search_batches) == sorted(f"searches: {c} seed {s}" for c in COUNTRIES for s in (0, 1))
        assert sorted(r.name for r in country_batches) == sorted(COUNTRIES)
        assert sorted(r.name for r in searches) == sorted(f"{c}, seed {s}" for c in COUNTRIES for s in (0, 1))
        assert {r.state_name for r in batches + searches + countries} == {"Completed"}
        assert icm_task_states(client, [r.id for r in searches]) == ["Completed"] * 4
        assert icm_task_states(client, [r.id for r in countries]) == ["Cached"] * 4
        for country in country_batches:  # a country starts only after its own searches have ended
            own = [r for r in search_batches if r.name.startswith(f"searches: {country.name} seed")]
            assert country.start_time >= max(r.end_time for r in own), country.name
        overlapping = [(a.name, b.name) for a in search_batches for b in search_batches
                       if a.name < b.name and a.start_time < b.end_time and b.start_time < a.end_time]
        assert overlapping, "no two search batches ran at once on the two-run server"

    with open_warehouse(warehouse, read_only=True) as wh:
        seeds = wh.sql("SELECT country, list(DISTINCT icm_seed ORDER BY icm_seed) AS s FROM icm_labels WHERE run_id = ? "
                       "GROUP BY 1 ORDER BY 1", [run_id])
        assert seeds["s"].to_list() == [[0, 1], [0, 1]]
        icm = wh.sql("SELECT n_seeds FROM results_by_country WHERE run_id = ? AND method = 'icm' AND experiment = 'main'", [run_id])
        assert icm["n_seeds"].to_list() == [2, 2]
    print(f"\ntwo seeds fanned out: 4 search batches, 2 country batches in {took:.0f} s; searches at once: {overlapping}")


def test_a_study_runs_model_after_model_each_in_batches_of_its_own(children, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client

    from persona_icm.warehouse import open_warehouse
    from tests.helpers import deployment_runs, flow_runs_named, results_alive_at_each_store

    models = [{"backend": "synthetic", "name": name} for name in ("synthetic-a", "synthetic-b")]
    alive = results_alive_at_each_store(monkeypatch)
    study_id, warehouse, took, since = run_fanned_out(tmp_path, children, {}, ["icm", "golden"], gpu_workers=2, base_models=models)
    assert alive == [1, 1, 1, 1]  # one batch's countries at a time (one each here), not every model's until the end
    with get_client(sync_client=True) as client:
        batches = created_since(deployment_runs(client, "persona-icm-batch/batch"), since)
        countries = created_since(flow_runs_named(client, "persona-icm-country"), since)
    assert sorted(r.name for r in batches) == sorted(f"synthetic:{m['name']}: {c}" for m in models for c in COUNTRIES)
    assert {r.state_name for r in batches + countries} == {"Completed"} and len(countries) == 4
    first, second = ([r for r in batches if r.name.startswith(f"synthetic:{m['name']}:")] for m in models)
    assert min(r.start_time for r in second) >= max(r.end_time for r in first)  # model after model
    with open_warehouse(warehouse, read_only=True) as wh:
        runs = wh.sql("SELECT run_id, base_model FROM runs WHERE study_id = ? ORDER BY base_model", [study_id])
        done = wh.sql("SELECT r.base_model, list(DISTINCT c.country ORDER BY c.country) AS countries FROM results_by_country c "
                      "JOIN runs r USING (run_id) WHERE r.study_id = ? GROUP BY 1 ORDER BY 1", [study_id])
    assert runs["base_model"].to_list() == [f"synthetic:{m['name']}" for m in models]
    assert done["countries"].to_list() == [sorted(COUNTRIES)] * 2  # every (country, model) reached results_by_country
    print(f"\ntwo base models fanned out over 2 workers: {len(batches)} batches in {took:.0f} s")
