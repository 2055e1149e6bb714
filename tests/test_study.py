"""A study of several base models (config base_models): the config's relation between base_model and
base_models, each model's run_id as a one-model run of it, the model sizes, and the study's views,
model-size chart and report, fed by the real search and evaluation with the synthetic scorer."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import polars as pl
import pytest

from persona_icm.charts import write_study_report
from persona_icm.cli import parse_overrides
from persona_icm.config import build_config
from persona_icm.model_sizes import REGISTERED, parameter_count
from persona_icm.preflight import InputError, build_checked_config
from persona_icm.run_identity import run_id_for, study_id_for
from persona_icm.warehouse import open_warehouse
from tests.test_results_warehouse import COUNTRIES, _write_run

TWO = [{"name": "smollm2-135m-instruct"}, {"name": "gemma-3-270m"}]


def test_base_models_defaults_to_base_model_and_its_first_is_base_model():
    one = build_config("smoke", {"base_model": {"name": "gemma-3-270m"}})
    assert [m.name for m in one.base_models] == ["gemma-3-270m"] and one.base_models == [one.base_model]
    two = build_config("smoke", parse_overrides([f"base_models={__import__('json').dumps(TWO)}"]))
    assert [m.name for m in two.base_models] == ["smollm2-135m-instruct", "gemma-3-270m"]
    assert two.base_model == two.base_models[0]
    agreeing = build_config("smoke", {"base_model": TWO[0], "base_models": TWO})
    assert agreeing.base_models == two.base_models


def test_base_model_that_disagrees_with_base_models_is_one_error_line():
    with pytest.raises(InputError, match=r"^invalid config: .*base_model \(hf:gemma-3-270m\) differs from the first of "
                                         r"base_models \(hf:smollm2-135m-instruct\)"):
        build_checked_config("smoke", {"base_model": TWO[1], "base_models": TWO})


def test_a_model_listed_twice_is_refused_even_with_other_speed_settings():
    """batch_size changes no score: the two would be the same run; a dtype does, so those two are distinct."""
    with pytest.raises(InputError, match=r"base_models\[1\] \(hf:gemma-3-270m\) scores as base_models\[0\] does"):
        build_checked_config("smoke", {"base_models": [TWO[1], {**TWO[1], "batch_size": 3}]})
    assert len(build_checked_config("smoke", {"base_models": [TWO[1], {**TWO[1], "dtype": "bfloat16"}]}).base_models) == 2


def test_the_presets_model_settings_apply_to_each_of_base_models():
    fork = build_config("fork", {"base_models": TWO})
    assert [m.vllm.kv_cache_dtype for m in fork.base_models] == ["fp8", "fp8"]


def test_each_model_of_a_study_has_the_run_id_of_a_one_model_run_of_it():
    """So a one-model study reuses today's run_id (and cache), and adding a model reruns nothing of the others."""
    study = build_config("seed", {"base_models": TWO})
    ids = [run_id_for(c, "d1", "code") for c in study.model_configs()]
    alone = [run_id_for(build_config("seed", {"base_model": m}), "d1", "code") for m in TWO]
    assert ids == alone and len(set(ids)) == 2
    assert run_id_for(build_config("seed"), "d1", "code") == run_id_for(build_config("seed", {"base_models": [{}]}), "d1", "code")
    assert study_id_for(ids[:1]) == ids[0]
    assert study_id_for(ids) == study_id_for(list(ids)) != study_id_for(ids[::-1])
    assert study_id_for(ids).startswith("seed-study-")


def test_parameter_counts_are_registered_or_counted_from_the_weights(tmp_path):
    from transformers import AutoModelForCausalLM

    from persona_icm.tiny_model import write_tiny_model

    assert parameter_count("meta-llama/Llama-3.1-70B-Instruct") == (REGISTERED["llama-3.1-70b"], "registered")
    assert parameter_count("smollm2-135m-instruct") == (134_515_008, "registered")
    assert parameter_count("google/gemma-3-270m")[0] == 268_098_176
    folder = write_tiny_model(tmp_path / "tiny")
    counted, source = parameter_count(str(folder))
    assert counted == AutoModelForCausalLM.from_pretrained(folder).num_parameters() and "safetensors" in source
    assert parameter_count("no-org/unknown-model")[0] is None


@pytest.fixture(scope="module")
def study_warehouse(tmp_path_factory):
    """A study s1 of two base models (two runs of the real search and evaluation, synthetic scorer,
    different evaluation seeds so their numbers differ), and a lone run r-alone from before studies."""
    wh = open_warehouse(tmp_path_factory.mktemp("wh") / "study.duckdb")
    for run_id, seed in (("r-small", 0), ("r-big", 1), ("r-alone", 2)):
        cfg = build_config("smoke", {"icm": {"iterations": 15}, "eval": {"eval_repeats": 3, "demo_sizes": [4], "seed": seed}})
        _write_run(wh, run_id, COUNTRIES, cfg, chat=True)
    wh.con.execute("UPDATE runs SET study_id = 's1', base_model = 'hf:smollm2-135m-instruct', base_model_parameters = 134515008 "
                   "WHERE run_id = 'r-small'")
    wh.con.execute("UPDATE runs SET study_id = 's1', base_model = 'hf:gemma-3-270m', base_model_parameters = 268098176 "
                   "WHERE run_id = 'r-big'")
    yield wh
    wh.close()


def test_study_results_key_every_headline_row_by_study_and_model(study_warehouse):
    wh = study_warehouse
    rows = wh.sql("SELECT * FROM study_results WHERE study_id = 's1'")
    headline = wh.sql("SELECT * FROM headline WHERE run_id IN ('r-small', 'r-big')")
    assert rows.height == headline.height > 0
    assert set(rows["base_model"]) == {"hf:smollm2-135m-instruct", "hf:gemma-3-270m"}
    assert set(rows["country"]) == {*COUNTRIES, "ALL"}
    # a run before studies is a study of its own
    assert wh.sql("SELECT DISTINCT study_id FROM study_results WHERE run_id = 'r-alone'")["study_id"].to_list() == ["r-alone"]


def test_model_comparison_is_each_models_pooled_headline_with_its_country_spread(study_warehouse):
    wh = study_warehouse
    comparison = wh.sql("SELECT * FROM model_comparison WHERE study_id = 's1' ORDER BY run_id, method")
    pooled = wh.sql("SELECT run_id, method, accuracy, ci_low FROM headline WHERE country = 'ALL' AND run_id IN ('r-small', 'r-big') "
                    "ORDER BY run_id, method")
    assert comparison.select("run_id", "method", "accuracy", "ci_low").equals(pooled)
    per_country = wh.sql("SELECT run_id, method, min(accuracy) lo, max(accuracy) hi, count(*)::INTEGER n FROM headline "
                         "WHERE country <> 'ALL' AND run_id IN ('r-small', 'r-big') GROUP BY ALL ORDER BY run_id, method")
    assert comparison["min_country_accuracy"].to_list() == per_country["lo"].to_list()
    assert comparison["max_country_accuracy"].to_list() == per_country["hi"].to_list()
    assert (comparison["n_countries"] == len(COUNTRIES)).all()
    icm = comparison.filter(pl.col("method") == "icm")
    assert icm.height == 2 and icm["accuracy"].n_unique() == 2  # the two models' numbers are their own


def test_the_study_report_draws_accuracy_against_model_size_per_method(study_warehouse, tmp_path):
    files = write_study_report(study_warehouse.sql, "s1", tmp_path)
    assert set(files.charts) == {"model_size"}
    png, svg = files.charts["model_size"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ET.fromstring(svg.read_text())
    spec = __import__("json").loads((tmp_path / "model_size.vl.json").read_text())
    assert spec["layer"][1]["encoding"]["x"]["scale"]["type"] == "log"
    data = next(iter(spec["datasets"].values()))
    assert {(d["model"], d["base_model_parameters"]) for d in data} == {("smollm2-135m-instruct", 134515008), ("gemma-3-270m", 268098176)}
    page = files.html.read_text()
    assert 'href="../r-small/report.html"' in page and 'href="../r-big/report.html"' in page
    assert "hf:gemma-3-270m" in page and "r-alone" not in page
    with pytest.raises(ValueError, match="no run or study 'nope' in the warehouse"):
        write_study_report(study_warehouse.sql, "nope", tmp_path / "nope")


def test_the_study_report_renders_in_headless_chromium(study_warehouse, tmp_path):
    from tests import browser

    if not browser.available():
        pytest.skip("needs Debian chromium and chromium-driver (.ci/run installs them)")
    files = write_study_report(study_warehouse.sql, "s1", tmp_path)
    with browser.chromium() as page:
        page.open(browser.file_url(files.html))
        drawn = page.run(
            """const svg = document.querySelector('figure#model_size svg'); const box = svg.getBoundingClientRect();
               return {width: box.width, height: box.height, marks: svg.querySelectorAll('path, line, rect, circle, text').length};"""
        )
        errors = [e for e in page.console() if e.get("level") == "SEVERE"]
    assert drawn["width"] > 200 and drawn["height"] > 150 and drawn["marks"] > 20, drawn
    assert errors == []


def test_a_run_of_a_study_run_again_alone_stays_in_its_study(tmp_path):
    from datetime import UTC, datetime

    from persona_icm.run_status import claim_run, finish_run

    with open_warehouse(tmp_path / "w.duckdb") as wh:
        def row(study_id, status):
            return {"run_id": "r-a", "preset": "smoke", "config_json": "{}", "base_model": "hf:a", "countries": ["France"],
                    "dataset_id": "d1", "code_version": "c", "started_at": datetime.now(UTC), "status": status, "study_id": study_id}

        claim_run(wh, row("s1", "running"))
        finish_run(wh, row("s1", "completed"))
        claim_run(wh, row("r-a", "running"))  # the same run_id alone (a one-model run of that model)
        assert wh.scalar("SELECT study_id FROM runs WHERE run_id = 'r-a'") == "s1"
        finish_run(wh, row("r-a", "completed"))
        assert wh.scalar("SELECT study_id FROM runs WHERE run_id = 'r-a'") == "s1"
        claim_run(wh, row("s2", "running"))  # a later study of it takes it
        assert wh.scalar("SELECT study_id FROM runs WHERE run_id = 'r-a'") == "s2"


def test_a_deployments_engine_settings_apply_to_each_model_and_tensor_parallel_size_too():
    """Deployment `full` sets base_model (vLLM, 70B, its engine args); a study given there lists its models by name,
    70B first, and each gets the engine settings and the worker's tensor_parallel_size."""
    from flows.experiment import with_tensor_parallel_size

    full = {"base_model": {"backend": "vllm", "name": "meta-llama/Llama-3.1-70B", "vllm": {"max_model_len": 8192}}}
    study = {**full, "base_models": [{"name": "meta-llama/Llama-3.1-70B"}, {"name": "meta-llama/Llama-3.1-8B"}]}
    config = build_config("fork", with_tensor_parallel_size(study, 4))
    assert [(m.backend, m.vllm.max_model_len, m.vllm.tensor_parallel_size, m.vllm.kv_cache_dtype) for m in config.base_models] == [
        ("vllm", 8192, 4, "fp8"), ("vllm", 8192, 4, "fp8")]
    assert config.base_model == config.base_models[0]
    with pytest.raises(InputError, match="differs from the first of base_models"):
        build_checked_config("fork", {**full, "base_models": [{"name": "meta-llama/Llama-3.1-8B"}]})
