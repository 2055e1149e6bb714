"""A study as a user runs it: `persona-icm run` with two base models (two tiny random Llamas of different
sizes) on one country. Each model is its own run with its own rows, both runs share the study_id, the chat
baseline is computed once and stored in both, the command prints one line per model, and the study report
draws accuracy against model size."""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET

import polars as pl
import pytest

from tests.goqa_fixtures import make_rows, write_goqa
from tests.helpers import ROOT, start_cli_run


@pytest.mark.slow
def test_a_two_model_study_gives_each_model_its_run_and_the_model_chart(harness, tmp_path):
    from persona_icm.tiny_model import write_tiny_model
    from persona_icm.warehouse import open_warehouse

    small, large = (str(write_tiny_model(tmp_path / f"tiny-{d}", head_dim=d)) for d in (32, 64))
    goqa = write_goqa(tmp_path / "goqa.csv", make_rows(12, 0, ["France"]))
    warehouse = tmp_path / "warehouse" / "persona_icm.duckdb"
    env = {**os.environ, "PREFECT_API_URL": harness, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    sets = {"base_models": [{"name": small}, {"name": large}], "chat_model": {"backend": "hf", "name": small},
            "data.countries": ["France"], "data.train_cap": 8, "data.test_cap": 4, "icm.iterations": 4,
            "icm.initial_fix_rounds": 3, "icm.loop_fix_rounds": 2, "eval.eval_repeats": 1, "eval.demo_sizes": [],
            "eval.bootstrap_samples": 100}
    log = tmp_path / "study.log"
    started = time.perf_counter()
    proc = start_cli_run(env, warehouse, goqa, sets, log)
    assert proc.wait(timeout=900) == 0, log.read_text()[-4000:]
    print(f"two-model study, 1 country: {time.perf_counter() - started:.0f} s")

    with open_warehouse(warehouse, read_only=True) as wh:
        runs = wh.sql("SELECT run_id, study_id, base_model, base_model_parameters, status FROM runs ORDER BY base_model_parameters")
        methods = wh.sql("SELECT run_id, method, count(*) AS n FROM predictions GROUP BY ALL ORDER BY ALL")
        chat = wh.sql("SELECT run_id, claim_id, score FROM predictions WHERE method = 'zero_shot_chat' ORDER BY claim_id, run_id")
        chat_calls = wh.sql("SELECT run_id, count(*) AS n FROM model_calls WHERE phase LIKE '%zero_shot_chat%' GROUP BY run_id")
        comparison = wh.sql("SELECT * FROM model_comparison ORDER BY base_model_parameters, method")
    assert runs["status"].to_list() == ["completed", "completed"]
    assert runs["base_model"].to_list() == [f"hf:{small}", f"hf:{large}"]
    assert runs["base_model_parameters"][0] < runs["base_model_parameters"][1]
    (study_id,) = set(runs["study_id"])
    assert study_id.startswith("smoke-study-") and study_id not in runs["run_id"].to_list()
    for run_id in runs["run_id"]:  # every method of each model's run has its rows
        assert set(methods.filter(pl.col("run_id") == run_id)["method"]) == {
            "icm", "golden", "random_matched", "zero_shot_base", "zero_shot_chat", "option_prior_golden", "option_prior_icm"}
    # the chat baseline is the same in both runs: computed once (its model calls are in one run), stored in each
    first, second = chat.partition_by("run_id")
    assert first.height == second.height > 0 and first["score"].to_list() == second["score"].to_list()
    assert chat_calls.height == 1 and chat_calls["run_id"].item() == runs["run_id"][1] and chat_calls["n"].item() > 0
    assert set(comparison["run_id"]) == set(runs["run_id"]) and (comparison["n_countries"] == 1).all()

    out = " ".join(log.read_text().split())
    for run in runs.iter_rows(named=True):
        assert f"run {run['run_id']} completed: base model {run['base_model']}" in out
    assert f"study {study_id} completed: 2 base models" in out
    report = warehouse.parent / "reports" / study_id
    assert (report / "model_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ET.parse(report / "model_size.svg").getroot().tag.endswith("svg")
    assert 'id="model_size"' in (report / "report.html").read_text()
