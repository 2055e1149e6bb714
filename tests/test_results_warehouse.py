"""Result tables, views, saved queries and charts, fed by the real search and evaluation code
with the synthetic scorer (no Prefect, no model)."""

import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from persona_icm.charts import write_report
from persona_icm.config import build_config
from persona_icm.evaluate import evaluate_country
from persona_icm.icm import run_icm
from persona_icm.scoring.synthetic import SyntheticScorer, make_claims
from persona_icm.warehouse import (
    open_warehouse,
    write_aggregate,
    write_evaluation,
    write_results,
    write_run,
)

QUERIES = Path(__file__).resolve().parent.parent / "warehouse" / "queries"
COUNTRIES = {"Atlantis": 14, "Lemuria": 10}  # test groups differ: the aggregate must weight them


def _country(country, n_test_groups, cfg):
    claims = make_claims(12 + n_test_groups, country=country, seed=len(country))
    claims = [c.__class__(f"{country}:{c.claim_id}", f"{country}:{c.group_id}", *[getattr(c, f) for f in ("country", "question", "option", "gold")]) for c in claims]
    train, test = claims[:24], claims[24:]
    scorer = SyntheticScorer({c.claim_id: c.gold for c in claims})
    # searches of different lengths leave pools of different sizes, as real countries do
    search = run_icm(train, scorer, cfg.icm.model_copy(update={"iterations": 5 + n_test_groups}), show_progress=False)
    result = evaluate_country(scorer, train, test, cfg.eval, icm_labels=search.label_of(), run_id="r1")
    return search, result


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    cfg = build_config("smoke", {"icm": {"iterations": 15}, "eval": {"eval_repeats": 3, "demo_sizes": [4, 8]}})
    wh = open_warehouse(tmp_path_factory.mktemp("wh") / "w.duckdb")
    write_run(wh, {
        "run_id": "r1", "preset": "smoke", "config_json": cfg.model_dump_json(), "base_model": "synthetic",
        "countries": list(COUNTRIES), "dataset_id": "d1", "code_version": "test",
        "started_at": datetime.now(UTC), "status": "completed",
    })
    frames = {}
    for country, n_test in COUNTRIES.items():
        search, result = _country(country, n_test, cfg)
        frames[country] = result
        seed = pl.lit(0).alias("icm_seed")
        write_results(wh, "r1", country, "icm", {"icm_labels": search.labels.with_columns(seed), "icm_trace": search.trace.with_columns(seed)})
        write_evaluation(wh, "r1", country, {"predictions": result.predictions, "demos": result.demos}, n_boot=200)
    predictions = pl.concat([r.predictions for r in frames.values()])
    demos = pl.concat([r.demos for r in frames.values()])
    write_aggregate(wh, "r1", n_boot=200)
    yield wh, predictions, demos
    wh.close()


def test_every_cell_has_its_interval_and_the_views_define_the_accuracies(warehouse):
    wh, predictions, demos = warehouse
    sql = wh.sql("SELECT * FROM results_by_country WHERE run_id = 'r1'")
    cells = predictions.select("country", "method", "experiment", "n_demos").unique()
    assert sql.height == cells.height > 0
    assert sql["ci_low"].is_not_null().all() and (sql["ci_low"] <= sql["accuracy"]).all() and (sql["accuracy"] <= sql["ci_high"]).all()
    # one cell by hand: golden's headline claim accuracy is the share of right predictions over its orders
    golden = predictions.filter(pl.col("country") == "Atlantis", pl.col("method") == "golden", pl.col("experiment") == "main")
    by_hand = golden.group_by("repeat").agg((pl.col("pred") == pl.col("gold")).mean().alias("acc"))["acc"].mean()
    got = sql.filter(pl.col("country") == "Atlantis", pl.col("method") == "golden", pl.col("experiment") == "main")
    assert got["accuracy"].item() == pytest.approx(by_hand)
    assert got["demo_label_accuracy"].item() == 1.0  # golden demos carry gold labels
    assert set(wh.sql("SELECT column_name FROM duckdb_columns() WHERE table_name = 'metrics'")["column_name"]).isdisjoint(
        {"claim_acc", "group_acc", "claim_acc_std", "demo_label_acc"}
    )  # the metrics table holds intervals only


def test_aggregate_is_test_size_weighted(warehouse):
    wh, _, _ = warehouse
    golden = wh.sql("SELECT country, accuracy, n_test_claims FROM results_by_country WHERE method = 'golden' AND experiment = 'main'")
    expected = (golden["accuracy"] * golden["n_test_claims"]).sum() / golden["n_test_claims"].sum()
    got = wh.sql("SELECT accuracy, ci_low, ci_high FROM results_aggregated WHERE method = 'golden' AND experiment = 'main'").row(0, named=True)
    assert got["accuracy"] == pytest.approx(expected)
    assert got["ci_low"] <= got["accuracy"] <= got["ci_high"]
    assert golden["n_test_claims"].to_list() != [golden["n_test_claims"][0]] * golden.height


def test_aggregate_pools_group_accuracy_by_questions_and_carries_the_std(tmp_path):
    """Group accuracy pooled by test questions (weighting it by claims gives another number), and
    the std over demo orders of the pooled accuracy."""
    from persona_icm.evaluate import PREDICTION_SCHEMA
    from persona_icm.warehouse import evaluation_warehouse

    rows = []
    for country, n_groups, size in (("A", 6, 2), ("B", 2, 4)):  # A: 12 claims, 6 questions; B: 8 claims, 2
        for repeat in range(3):
            for g in range(n_groups):
                for k in range(size):
                    gold = int(k == 0)
                    right = (g + repeat) % 3 != 0 if country == "A" else g == 0
                    score = (1.0 if gold else -1.0) * (1 if right else -1) * (1 + k)
                    rows.append(("r2", country, "golden", "main", 8, repeat, -1, f"{country}{g}-{k}", f"{country}{g}",
                                 score, int(score > 0), gold))
    predictions = pl.DataFrame(rows, schema=PREDICTION_SCHEMA, orient="row")
    with evaluation_warehouse(predictions, n_boot=100) as wh:
        sql = wh.sql("SELECT * FROM results_aggregated WHERE run_id = 'r2'").row(0, named=True)
    # A: in every order 4 of 6 questions right (both claims), B: question 0 right (4 claims), question 1 wrong
    assert sql["group_accuracy"] == pytest.approx((6 * (4 / 6) + 2 * 0.5) / 8, abs=1e-12)
    assert sql["accuracy"] == pytest.approx((12 * (4 / 6) + 8 * 0.5) / 20, abs=1e-12)
    assert sql["accuracy_std"] == pytest.approx(0.0, abs=1e-12) and sql["n_orders"] == 3  # every order alike
    by_claims = (12 * (4 / 6) + 8 * 0.5) / 20  # what weighting group accuracy by claims gives
    assert abs(sql["group_accuracy"] - by_claims) > 0.01


def test_accuracy_vs_examples_has_the_weighted_aggregate_over_shared_demo_counts(warehouse):
    """Country ALL: the pooled curve at every demo count all countries have, then the pooled whole
    pools (experiment main) at the countries' mean pool size."""
    wh, predictions, demos = warehouse
    pooled = wh.sql("SELECT * FROM results_aggregated WHERE run_id = 'r1' AND experiment = 'curve' "
                    "AND method IN ('golden', 'icm', 'random_matched')")
    everything = wh.sql("SELECT * FROM accuracy_vs_examples WHERE run_id = 'r1' AND country = 'ALL'")
    sql = everything.filter(pl.col("experiment") == "curve")
    joined = sql.join(pooled, on=["method", "n_demos"], how="full", coalesce=True)
    assert joined.height == sql.height == pooled.height > 0
    assert (joined["accuracy"] - joined["accuracy_right"]).abs().max() < 1e-12
    assert (joined["n_orders"] == joined["n_orders_right"]).all() and joined["ci_low"].is_not_null().all()
    per_country = wh.sql("SELECT country, n_demos FROM accuracy_vs_examples WHERE run_id = 'r1' AND country <> 'ALL'")
    shared = set.intersection(*(set(f["n_demos"]) for f in per_country.partition_by("country")))
    assert set(sql["n_demos"]) == shared

    pool_sizes = wh.sql("SELECT DISTINCT country, n_demos FROM results_by_country WHERE run_id = 'r1' AND method = 'icm' "
                        "AND experiment = 'main'")
    assert pool_sizes["n_demos"].n_unique() == 2  # the fixture's countries have pools of different sizes
    whole = everything.filter(pl.col("experiment") == "main").sort("method")
    main = wh.sql("SELECT method, accuracy FROM results_aggregated WHERE run_id = 'r1' AND experiment = 'main' "
                  "AND method IN ('golden', 'icm', 'random_matched') ORDER BY method")
    assert whole["method"].to_list() == main["method"].to_list() and whole.height > 0
    assert (whole["accuracy"] - main["accuracy"]).abs().max() < 1e-12
    pools = wh.sql("SELECT method, round(avg(n_demos))::INTEGER AS n FROM results_by_country WHERE run_id = 'r1' "
                   "AND experiment = 'main' AND method IN ('golden', 'icm', 'random_matched') GROUP BY 1 ORDER BY 1")
    assert whole["n_demos"].to_list() == pools["n"].to_list()


def test_rewriting_a_country_replaces_its_rows(warehouse):
    wh, predictions, _ = warehouse
    before = wh.scalar("SELECT count(*) FROM predictions")
    atlantis = predictions.filter(pl.col("country") == "Atlantis")
    write_results(wh, "r1", "Atlantis", "eval", {"predictions": atlantis})
    assert wh.scalar("SELECT count(*) FROM predictions") == before == predictions.height
    with pytest.raises(ValueError, match="not a result table"):
        write_results(wh, "r1", "Atlantis", "eval", {"claims": atlantis})


@pytest.mark.parametrize("query", sorted(p.name for p in QUERIES.glob("*.sql")))
def test_saved_queries_run_and_return_rows(warehouse, query):
    wh, *_ = warehouse
    calls = pl.DataFrame({"phase": ["icm"], "model": ["m"], "call_index": [0], "n_prompts": [3],
                          "prompt_tokens": [300], "cached_tokens": [100], "wall_seconds": [0.5]})
    write_results(wh, "r1", "Atlantis", "icm", {"model_calls": calls})
    wh.con.execute("UPDATE runs SET finished_at = now()")
    frame = wh.sql((QUERIES / query).read_text())
    assert frame.height > 0, query


def test_report_has_three_valid_charts_and_references_them(warehouse, tmp_path):
    wh, *_ = warehouse
    files = write_report(wh.sql, "r1", tmp_path)
    assert set(files.charts) == {"accuracy_by_method", "accuracy_vs_examples", "icm_trace"}
    page = files.html.read_text()
    for name, (png, svg) in files.charts.items():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert ET.parse(svg).getroot().tag.endswith("svg")
        assert f'id="{name}"' in page and png.name in page and svg.name in page
        spec = json.loads(png.with_suffix(".vl.json").read_text())
        assert all(spec["datasets"].values()) and spec["datasets"], name
    assert "http://" not in page.replace("http://www.w3.org", "") and "<script" not in page
    assert "Atlantis" in page and "All countries (weighted)" in page
    assert "data d1" in page and "status completed" in page  # the run's dataset_id and status
    with pytest.raises(ValueError, match="not in the warehouse"):
        write_report(wh.sql, "nope", tmp_path / "x")
    assert not (tmp_path / "x").exists()  # an unknown run leaves no empty folder


@pytest.mark.integration
def test_report_renders_every_chart_in_headless_chromium(warehouse, tmp_path):
    from tests import browser

    if not browser.available():
        pytest.skip("needs Debian chromium and chromium-driver (.ci/run installs them)")
    wh, *_ = warehouse
    files = write_report(wh.sql, "r1", tmp_path)
    with browser.chromium() as page:
        page.open(browser.file_url(files.html))
        drawn = page.run(
            """return [...document.querySelectorAll('figure')].map(f => {
                 const svg = f.querySelector('svg'); const box = svg ? svg.getBoundingClientRect() : null;
                 return {id: f.id, width: box ? box.width : 0, height: box ? box.height : 0,
                         marks: svg ? svg.querySelectorAll('path, line, rect, circle, text').length : 0};
               });"""
        )
        errors = [e for e in page.console() if e.get("level") == "SEVERE"]
    assert {d["id"] for d in drawn} == set(files.charts)
    for chart in drawn:
        assert chart["width"] > 200 and chart["height"] > 150 and chart["marks"] > 20, chart
    assert errors == []


def test_published_numbers_join_the_run_by_dataset_country_and_method(warehouse):
    wh, *_ = warehouse
    published = wh.sql("SELECT * FROM published_results")
    assert published.height == 28 and set(published["dataset"]) == {"binary", "all"}
    agg = published.filter((pl.col("dataset") == "all") & (pl.col("country") != "ALL"))
    for method, pooled in [("icm", 81.9), ("golden", 84.9), ("zero_shot_chat", 81.6), ("zero_shot_base", 74.0)]:
        assert agg.filter(method=method)["accuracy_pct"].mean() == pytest.approx(pooled, abs=0.05)  # 3 x 50 test claims
    wh.con.execute("UPDATE runs SET finished_at = now()")
    original = wh.scalar("SELECT config_json FROM runs WHERE run_id = 'r1'")
    config = json.loads(original)
    config["data"]["dataset"] = "binary"
    wh.con.execute("UPDATE runs SET config_json = ? WHERE run_id = 'r1'", [json.dumps(config)])
    wh.con.execute("UPDATE predictions SET country = 'France' WHERE country = 'Atlantis'")
    try:
        frame = wh.sql((QUERIES / "compare_with_published.sql").read_text())
        france_icm = frame.filter(country="France", method="icm")
        assert france_icm["published_pct"].item() == 68.6 and france_icm["dataset"].item() == "binary"
        ours = wh.scalar("SELECT accuracy FROM results_by_country WHERE country = 'France' AND method = 'icm' AND experiment = 'main'")
        assert france_icm["difference_pct"].item() == pytest.approx(round(100 * ours - 68.6, 1))
        assert frame.filter(country="Lemuria")["published_pct"].is_null().all()
    finally:
        wh.con.execute("UPDATE predictions SET country = 'Atlantis' WHERE country = 'France'")
        wh.con.execute("UPDATE runs SET config_json = ? WHERE run_id = 'r1'", [original])


def test_several_icm_seeds_give_per_seed_rows_and_seed_covering_intervals(tmp_path):
    """Two independent searches (icm.seeds [0, 1]) evaluated together: each seed's rows, the
    mean over seeds and orders, n_seeds, and an interval that resamples the seeds."""
    cfg = build_config("smoke", {"icm": {"iterations": 15, "seeds": [0, 1]}, "eval": {"eval_repeats": 2, "demo_sizes": [4]}})
    claims = make_claims(36, country="Atlantis", seed=3)
    train, test = claims[:24], claims[24:]
    scorer = SyntheticScorer({c.claim_id: c.gold for c in claims})
    searches = {icm.seed: run_icm(train, scorer, icm, show_progress=False) for icm in cfg.icm.searches()}
    assert [icm.seed for icm in cfg.icm.searches()] == [0, 1]
    labels = {seed: s.label_of() for seed, s in searches.items()}
    result = evaluate_country(scorer, train, test, cfg.eval, icm_labels=labels, run_id="r3")
    with open_warehouse(tmp_path / "w.duckdb") as wh:
        write_evaluation(wh, "r3", "Atlantis", {"predictions": result.predictions, "demos": result.demos}, n_boot=200)
        icm = wh.sql("SELECT * FROM results_by_country WHERE method = 'icm' AND experiment = 'main'").row(0, named=True)
        per_seed = wh.sql("SELECT icm_seed, accuracy, n_orders FROM accuracy_by_seed WHERE method = 'icm' AND experiment = 'main' ORDER BY 1")
        zero_shot = wh.scalar("SELECT n_seeds FROM results_by_country WHERE method = 'zero_shot_base'")
        n_icm_seeds = wh.scalar("SELECT n_icm_seeds FROM metrics WHERE method = 'icm' AND experiment = 'main'")
    assert per_seed["icm_seed"].to_list() == [0, 1] and per_seed["n_orders"].to_list() == [2, 2]
    assert icm["n_seeds"] == 2 and icm["n_orders"] == 4 and zero_shot == 0 and n_icm_seeds == 2
    assert icm["accuracy"] == pytest.approx(per_seed["accuracy"].mean())
    assert icm["ci_low"] <= min(per_seed["accuracy"]) or icm["ci_low"] <= icm["accuracy"] <= icm["ci_high"]
    with pytest.raises(ValueError, match="listed twice"):
        build_config("smoke", {"icm": {"seeds": [1, 1]}})
