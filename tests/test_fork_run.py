"""The `fork` and `seed` presets as a user runs them, at smoke size: `persona-icm run --preset P` on
a generated GOQA file with a tiny random Llama (small caps and K). For `fork`, what makes it the
fork's search: the runs row says `fork`, U carries no consistency term and ConsistencyFix never
ran, and the seed labels sit on the first num_seed training claims in split order. For `seed`, U
carries the consistency term."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NUM_SEED = 4
COUNTRIES = ["United States", "France"]


def run_preset(preset: str, harness: str, tmp_path: Path) -> Path:
    """`python -m flows.cli run --preset PRESET` at smoke size on a generated GOQA file; its warehouse."""
    from persona_icm.tiny_model import write_tiny_model
    from tests.goqa_fixtures import make_rows, write_goqa

    model = str(write_tiny_model(tmp_path / "tiny-llama"))
    goqa = write_goqa(tmp_path / "goqa.csv", make_rows(24, 4, COUNTRIES))
    warehouse = tmp_path / "warehouse" / "persona_icm.duckdb"
    sets = {
        "data.countries": COUNTRIES, "data.train_cap": 12, "data.test_cap": 8,
        "base_model.name": model, "chat_model": {"backend": "hf", "name": model},
        "icm.num_seed": NUM_SEED, "icm.iterations": 8, "icm.checkpoint_every": 4,
        "eval.eval_repeats": 2, "eval.demo_sizes": [4], "eval.bootstrap_samples": 100,
    }
    command = [sys.executable, "-m", "flows.cli", "--warehouse", str(warehouse), "run", "--preset", preset,
               "--goqa-path", str(goqa)]
    for key, value in sets.items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    env = {**os.environ, "PREFECT_API_URL": harness, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    log = tmp_path / f"{preset}.log"
    with log.open("w") as out:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
    assert done.returncode == 0, log.read_text()[-4000:]
    return warehouse


def completed_run(wh, preset: str) -> tuple[dict, dict, object]:
    """The one runs row (completed, of `preset`), its config and its ICM trace."""
    run = wh.sql("SELECT * FROM runs").row(0, named=True)
    assert run["preset"] == preset and run["status"] == "completed"
    trace = wh.sql("SELECT * FROM icm_trace ORDER BY country, iteration")
    assert set(trace["country"]) == set(COUNTRIES)
    return run, json.loads(run["config_json"]), trace


@pytest.mark.slow
def test_fork_preset_runs_at_smoke_size_without_the_consistency_term(harness, tmp_path):
    from persona_icm.warehouse import open_warehouse

    warehouse = run_preset("fork", harness, tmp_path)
    with open_warehouse(warehouse, read_only=True) as wh:
        run, config, trace = completed_run(wh, "fork")
        assert config["icm"]["consistency"] is False and config["icm"]["context_order"] == "claim"
        assert config["base_model"]["vllm"]["kv_cache_dtype"] == "fp8"
        alpha = config["icm"]["alpha"]
        assert trace["iteration"].max() == 8
        for row in trace.iter_rows(named=True):  # U = alpha * P: no -I term, and no ConsistencyFix applied
            assert row["U"] == pytest.approx(alpha * row["P"], abs=1e-12) and row["fixes"] in (0, None), row
        seeded = wh.sql(
            """SELECT s.country, s.position, l.label, l.entered_iteration = 0 AS seeded
               FROM splits s JOIN icm_labels l ON l.claim_id = s.claim_id AND l.country = s.country
               WHERE s.dataset_id = ? AND s.split = 'train' AND l.run_id = ?
               ORDER BY s.country, s.position""",
            [run["dataset_id"], run["run_id"]],
        )
    for country in COUNTRIES:
        rows = seeded.filter(country=country)
        assert rows.height > NUM_SEED
        first = rows.filter(rows["position"] < NUM_SEED)
        assert first["seeded"].all() and not rows.filter(rows["position"] >= NUM_SEED)["seeded"].any(), rows
        assert trace.filter(country=country, iteration=0)["pool_size"].item() == NUM_SEED


@pytest.mark.slow
def test_seed_preset_runs_at_smoke_size_with_the_consistency_term(harness, tmp_path):
    from persona_icm.warehouse import open_warehouse

    warehouse = run_preset("seed", harness, tmp_path)
    with open_warehouse(warehouse, read_only=True) as wh:
        run, config, trace = completed_run(wh, "seed")
        assert config["icm"]["consistency"] is True and config["icm"]["seed_claims"] == "random"
        headline = wh.sql("SELECT DISTINCT country FROM headline WHERE country <> 'ALL'")
    assert set(headline["country"]) == set(COUNTRIES)
    for row in trace.iter_rows(named=True):  # U = alpha * P - I
        assert row["U"] == pytest.approx(config["icm"]["alpha"] * row["P"] - row["I"], abs=1e-12), row
