"""Result tables, views, saved queries and charts, fed by the real search and evaluation code
with the synthetic scorer (no Prefect, no model)."""

import html
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
from persona_icm.icm.diagnosis import diagnose
from persona_icm.metrics import write_aggregate, write_evaluation
from persona_icm.scoring.synthetic import SyntheticScorer, make_claims
from persona_icm.warehouse import (
    open_warehouse,
    write_results,
    write_run,
)
from tests.helpers import wait_until

QUERIES = Path(__file__).resolve().parent.parent / "warehouse" / "queries"
COUNTRIES = {"Atlantis": 14, "Lemuria": 10}  # test groups differ: the aggregate must weight them


def _country(country, n_test_groups, cfg, run_id="r1", chat=False):
    claims = make_claims(12 + n_test_groups, country=country, seed=len(country))
    claims = [c.__class__(f"{country}:{c.claim_id}", f"{country}:{c.group_id}", *[getattr(c, f) for f in ("country", "question", "option", "gold")]) for c in claims]
    train, test = claims[:24], claims[24:]
    scorer = SyntheticScorer({c.claim_id: c.gold for c in claims})
    # searches of different lengths leave pools of different sizes, as real countries do
    icm = cfg.icm.model_copy(update={"iterations": 5 + n_test_groups})
    search = run_icm(train, scorer, icm, show_progress=False)
    result = evaluate_country(scorer, train, test, cfg.eval, icm_labels=search.label_of(), run_id=run_id,
                              chat_scorer=scorer if chat else None)
    return search, result, diagnose(train, search.labels, scorer, icm)


def _write_run(wh, run_id, countries, cfg, config_json=None, chat=False):
    """One completed run of the real search and evaluation (synthetic scorer) in `wh`."""
    write_run(wh, {
        "run_id": run_id, "preset": cfg.preset, "config_json": config_json or cfg.model_dump_json(), "base_model": "synthetic",
        "countries": list(countries), "dataset_id": "d1", "code_version": "test",
        "started_at": datetime.now(UTC), "status": "completed",
    })
    frames = {}
    for country, n_test in countries.items():
        search, result, diagnosis = _country(country, n_test, cfg, run_id, chat)
        frames[country] = result
        seed = pl.lit(0).alias("icm_seed")
        write_results(wh, run_id, country, "icm", {
            "icm_labels": search.labels.with_columns(seed), "icm_trace": search.trace.with_columns(seed),
            "icm_diagnosis": diagnosis.energies.with_columns(seed), "icm_diagnosis_groups": diagnosis.groups.with_columns(seed),
        })
        write_evaluation(wh, run_id, country, {"predictions": result.predictions, "demos": result.demos}, n_boot=200)
    write_aggregate(wh, run_id, n_boot=200)
    return frames


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    cfg = build_config("smoke", {"icm": {"iterations": 15}, "eval": {"eval_repeats": 3, "demo_sizes": [4, 8]}})
    wh = open_warehouse(tmp_path_factory.mktemp("wh") / "w.duckdb")
    frames = _write_run(wh, "r1", COUNTRIES, cfg)
    predictions = pl.concat([r.predictions for r in frames.values()])
    demos = pl.concat([r.demos for r in frames.values()])
    yield wh, predictions, demos
    wh.close()


FORK_COUNTRIES = {"United States": 14, "France": 10, "Japan": 12}


def _fork_config_json(cfg, **data):
    """The run's config as persisted, with data.protocol 'fork' (the key A's data chain adds)."""
    config = json.loads(cfg.model_dump_json())
    config["data"].update({"protocol": "fork", "dataset": "binary", **data})
    return json.dumps(config)


@pytest.fixture(scope="module")
def fork_warehouse(tmp_path_factory):
    """A warehouse with a fork-protocol run of the fork's three countries (r-fork, chat baseline
    included), one without the chat baseline (r-nochat), a fork-protocol run missing Japan (r-two) and
    a balanced-protocol run (r-balanced)."""
    cfg = build_config("fork", {"icm": {"iterations": 15, "num_seed": 4}, "eval": {"eval_repeats": 3, "demo_sizes": [4]}})
    wh = open_warehouse(tmp_path_factory.mktemp("wh") / "fork.duckdb")
    _write_run(wh, "r-fork", FORK_COUNTRIES, cfg, _fork_config_json(cfg), chat=True)
    _write_run(wh, "r-two", {"United States": 14, "France": 10}, cfg, _fork_config_json(cfg))
    _write_run(wh, "r-balanced", FORK_COUNTRIES, cfg, _fork_config_json(cfg, protocol="balanced"))
    _write_run(wh, "r-nochat", FORK_COUNTRIES, cfg, _fork_config_json(cfg))
    wh.con.execute("UPDATE runs SET finished_at = now()")
    yield wh
    wh.close()


WORLD_COUNTRIES = {"France": 14, "Britain": 12, "Brazil (Non-national sample)": 10, "Singapore": 8}
LEFT_OUT = {"Japan": "5 usable question group(s), fewer than min_groups 40", "Kenya": "3 usable question group(s), fewer than min_groups 40"}


@pytest.fixture(scope="module")
def world_warehouse(tmp_path_factory):
    """A run of four countries of a `data.countries: all` dataset (d1) that left out Japan and Kenya;
    Singapore has no shape on the 1:110m map."""
    cfg = build_config("smoke", {"icm": {"iterations": 15}, "eval": {"eval_repeats": 3, "demo_sizes": [4]}})
    wh = open_warehouse(tmp_path_factory.mktemp("wh") / "world.duckdb")
    _write_run(wh, "r-world", WORLD_COUNTRIES, cfg)
    rows = [(c, 40, True, None) for c in WORLD_COUNTRIES] + [(c, int(r.split()[0]), False, r) for c, r in LEFT_OUT.items()]
    selection = pl.DataFrame(rows, schema=["country", "n_groups", "selected", "reason"], orient="row")
    wh.replace("dataset_countries", selection.with_columns(dataset_id=pl.lit("d1")), dataset_id="d1")
    yield wh
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
    from persona_icm.metrics import evaluation_warehouse

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


def test_base_methods_stored_first_and_the_chat_baseline_later_give_the_tables_of_one_write(tmp_path):
    """The flow stores a country's base-model methods when its batch returns and the chat baseline's at the end
    (tasks/persist.py): the same rows and intervals as writing all methods at once, and each write replaces its
    own methods only."""
    from persona_icm.methods import uses_chat_model

    cfg = build_config("smoke", {"icm": {"iterations": 12}, "eval": {"eval_repeats": 2, "demo_sizes": [4]}})
    _, result, _ = _country("Atlantis", 14, cfg, chat=True)
    is_chat = pl.col("method").map_elements(uses_chat_model, return_dtype=pl.Boolean)
    chat_methods = sorted(set(result.predictions.filter(is_chat)["method"]))
    base_methods = sorted(set(result.predictions.filter(~is_chat)["method"]))
    assert chat_methods and base_methods

    def split(frame, methods):
        return frame.filter(pl.col("method").is_in(methods))

    def tables(wh):
        return {t: wh.sql(f"SELECT * FROM {t} ORDER BY ALL") for t in ("predictions", "demos", "metrics")}

    with open_warehouse(tmp_path / "once.duckdb") as once, open_warehouse(tmp_path / "twice.duckdb") as twice:
        write_evaluation(once, "r1", "Atlantis", {"predictions": result.predictions, "demos": result.demos}, n_boot=200)
        write_evaluation(twice, "r1", "Atlantis", {"predictions": split(result.predictions, base_methods),
                         "demos": split(result.demos, base_methods)}, n_boot=200, methods=base_methods, intervals=False)
        assert twice.scalar("SELECT count(*) FROM metrics") == 0
        chat = {"predictions": split(result.predictions, chat_methods), "demos": split(result.demos, chat_methods)}
        write_evaluation(twice, "r1", "Atlantis", chat, n_boot=200, step="chat", methods=chat_methods)
        expected = tables(once)
        assert all(tables(twice)[t].equals(frame) for t, frame in expected.items())
        write_evaluation(twice, "r1", "Atlantis", chat, n_boot=200, step="chat", methods=chat_methods)  # a rerun's
        assert all(tables(twice)[t].equals(frame) for t, frame in expected.items())
        with pytest.raises(ValueError, match="some rows have method"):  # a method outside the set it replaces
            write_evaluation(twice, "r1", "Atlantis", {"predictions": result.predictions}, methods=chat_methods)
        assert all(tables(twice)[t].equals(frame) for t, frame in expected.items())


# compare_with_published.sql reads only runs of the fork's protocol: its own test below.
@pytest.mark.parametrize("query", sorted(p.name for p in QUERIES.glob("*.sql") if p.name != "compare_with_published.sql"))
def test_saved_queries_run_and_return_rows(warehouse, query):
    wh, *_ = warehouse
    calls = pl.DataFrame({"phase": ["icm"], "model": ["m"], "call_index": [0], "n_prompts": [3],
                          "prompt_tokens": [300], "cached_tokens": [100], "wall_seconds": [0.5]})
    write_results(wh, "r1", "Atlantis", "icm", {"model_calls": calls})
    wh.con.execute("UPDATE runs SET finished_at = now()")
    frame = wh.sql((QUERIES / query).read_text())
    assert frame.height > 0, query


def test_report_has_four_valid_charts_and_references_them(warehouse, tmp_path):
    wh, *_ = warehouse
    files = write_report(wh.sql, "r1", tmp_path)
    # two countries: a ranking; no world map (Atlantis and Lemuria are on no map)
    assert set(files.charts) == {"accuracy_by_method", "accuracy_vs_examples", "icm_trace", "icm_diagnosis", "country_ranking"}
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
    verdicts = wh.sql("SELECT country, verdict FROM icm_diagnosis_verdict WHERE run_id = 'r1' ORDER BY 1").rows()
    assert [c for c, _ in verdicts] == ["Atlantis", "Lemuria"]
    assert "<h2>ICM diagnosis: gold vs ICM" in page
    assert all(html.escape(v) in page for _, v in verdicts)
    with pytest.raises(ValueError, match="not in the warehouse"):
        write_report(wh.sql, "nope", tmp_path / "x")
    assert not (tmp_path / "x").exists()  # an unknown run leaves no empty folder


@pytest.mark.integration
@pytest.mark.parametrize("which,run_id", [("warehouse", "r1"), ("fork_warehouse", "r-fork"), ("world_warehouse", "r-world")])
def test_report_renders_every_chart_in_headless_chromium(request, which, run_id, tmp_path):
    from tests import browser

    if not browser.available():
        pytest.skip("needs Debian chromium and chromium-driver (.ci/run installs them)")
    wh = request.getfixturevalue(which)
    wh = wh[0] if isinstance(wh, tuple) else wh
    files = write_report(wh.sql, run_id, tmp_path)
    assert ("published_comparison" in files.charts) == (run_id == "r-fork")
    with browser.chromium() as page:
        page.open(browser.file_url(files.html))
        # the charts render asynchronously: slower on a loaded machine
        wait_until("every figure drawn", lambda: page.run(
            "return [...document.querySelectorAll('figure')].every(f => f.querySelector('svg'))"), timeout=60, poll=0.5)
        drawn = page.run(
            """return [...document.querySelectorAll('figure')].map(f => {
                 const svg = f.querySelector('svg'); const box = svg ? svg.getBoundingClientRect() : null;
                 return {id: f.id, width: box ? box.width : 0, height: box ? box.height : 0,
                         marks: svg ? svg.querySelectorAll('path, line, rect, circle, text').length : 0};
               });"""
        )
        verdicts = page.run("return [...document.querySelectorAll('td')].filter(td => "
                            "['inside', 'outside'].includes(td.textContent)).length")
        errors = [e for e in page.console() if e.get("level") == "SEVERE"]
    assert verdicts == (16 if run_id == "r-fork" else 0)  # one line per published (country, method)
    assert {d["id"] for d in drawn} == set(files.charts)
    for chart in drawn:
        assert chart["width"] > 200 and chart["height"] > 150 and chart["marks"] > 20, chart
    assert errors == []


def test_country_ranking_sets_golden_beside_icm_and_ranks_by_icm(world_warehouse):
    ranking = world_warehouse.sql("SELECT * FROM country_ranking WHERE run_id = 'r-world' ORDER BY rank, country")
    headline = world_warehouse.sql("SELECT country, method, accuracy FROM headline WHERE run_id = 'r-world' AND country <> 'ALL'")
    accuracy = {(c, m): a for c, m, a in headline.iter_rows()}
    assert sorted(ranking["country"]) == sorted(WORLD_COUNTRIES)
    for r in ranking.iter_rows(named=True):
        assert r["icm_accuracy"] == accuracy[(r["country"], "icm")]
        assert r["golden_accuracy"] == accuracy[(r["country"], "golden")]
        assert r["icm_minus_golden"] == pytest.approx(r["icm_accuracy"] - r["golden_accuracy"])
        assert r["zero_shot_base_accuracy"] == accuracy[(r["country"], "zero_shot_base")]
    assert ranking["icm_accuracy"].to_list() == sorted(ranking["icm_accuracy"], reverse=True)
    assert ranking["rank"][0] == 1


def test_report_of_a_study_has_the_world_map_with_the_left_out_countries_and_the_ranking(world_warehouse, tmp_path):
    files = write_report(world_warehouse.sql, "r-world", tmp_path)
    assert {"world_map", "country_ranking"} <= set(files.charts)
    png, svg = files.charts["world_map"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and ET.parse(svg).getroot().tag.endswith("svg")
    spec_text = png.with_suffix(".vl.json").read_text()
    spec = json.loads(spec_text)
    assert spec["data"]["values"]["type"] == "Topology" and spec["data"]["format"] == {"type": "topojson", "feature": "countries"}
    assert '"url"' not in spec_text  # the map is embedded, never fetched
    (lookup,) = {json.dumps(t["from"]["data"]["values"]) for p in spec["vconcat"] for layer in p["layer"]
                 for t in layer["transform"] if "lookup" in t}
    shapes = {r["country"]: (r["id"], r["status"]) for r in json.loads(lookup)}
    assert shapes == {"France": ("250", "in this run"), "Britain": ("826", "in this run"),
                      "Brazil (Non-national sample)": ("076", "in this run"),
                      "Japan": ("392", "left out: too few question groups"), "Kenya": ("404", "left out: too few question groups")}
    svg_text = svg.read_text()
    assert "left out: too few question groups" in svg_text and "not in this run" in svg_text  # the legend
    drawn = [r for r in json.loads(lookup) if r["status"] == "in this run"]
    (difference,) = [layer["encoding"]["color"]["scale"] for layer in spec["vconcat"][1]["layer"]
                     if layer["encoding"]["color"]["field"] == "icm_minus_golden"]
    reach = difference["domain"][1]  # symmetric about 0, reaching every country's difference: no colour is cut off
    assert difference["domain"] == [-reach, reach] and not difference.get("clamp")
    assert max(abs(r["icm_minus_golden"]) for r in drawn) <= reach < max(abs(r["icm_minus_golden"]) for r in drawn) + 0.1 + 1e-9
    page = files.html.read_text()
    assert "Not on the map (no shape at 1:110m): Singapore." in page
    assert "Countries left out (2)" in page and LEFT_OUT["Japan"] in page
    assert page.count("<tr>") >= len(WORLD_COUNTRIES) + len(LEFT_OUT)


def test_published_numbers_have_both_datasets_and_their_aggregates(warehouse):
    wh, *_ = warehouse
    published = wh.sql("SELECT * FROM published_results")
    assert published.height == 32 and set(published["dataset"]) == {"binary", "all"}
    for dataset, pooled in [("all", {"icm": 81.9, "golden": 84.9, "zero_shot_chat": 81.6, "zero_shot_base": 74.0}),
                            ("binary", {"icm": 74.0, "golden": 77.5, "zero_shot_chat": 75.0, "zero_shot_base": 65.5})]:
        countries = published.filter((pl.col("dataset") == dataset) & (pl.col("country") != "ALL"))
        for method, value in pooled.items():
            assert published.filter(dataset=dataset, country="ALL", method=method)["accuracy_pct"].item() == value
            assert countries.filter(method=method)["accuracy_pct"].mean() == pytest.approx(value, abs=0.05)  # equal test sizes


def test_a_fork_protocol_run_is_set_beside_every_published_number_with_its_verdict(fork_warehouse):
    wh = fork_warehouse
    rows = wh.sql("SELECT * FROM published_comparison WHERE run_id = 'r-fork'")
    assert sorted(set(rows["country"])) == ["ALL", "France", "Japan", "United States"]
    assert rows.height == 16 and set(rows["method"]) == {"icm", "golden", "zero_shot_chat", "zero_shot_base"}
    assert set(rows["dataset"]) == {"binary"}
    for row in rows.iter_rows(named=True):
        assert row["accuracy_pct"] is not None and row["ci_low_pct"] <= row["accuracy_pct"] <= row["ci_high_pct"], row
        inside = row["ci_low_pct"] <= row["published_pct"] <= row["ci_high_pct"]
        assert row["published_in_interval"] == ("inside" if inside else "outside"), row
    ours = wh.sql("SELECT * FROM headline WHERE run_id = 'r-fork' AND country = 'France' AND method = 'icm'").row(0, named=True)
    france = rows.filter(country="France", method="icm").row(0, named=True)
    assert france["published_pct"] == 68.6 and france["accuracy_pct"] == pytest.approx(100 * ours["accuracy"])
    assert france["ci_low_pct"] == pytest.approx(100 * ours["ci_low"])
    assert rows.filter(country="ALL", method="golden")["published_pct"].item() == 77.5
    # no comparison for a run of another protocol, or one without all of the fork's countries
    assert wh.sql("SELECT * FROM published_comparison WHERE run_id IN ('r-two', 'r-balanced')").height == 0
    # the query: the latest comparable run, one line per (country, method)
    wh.con.execute("UPDATE runs SET finished_at = now() - INTERVAL 1 HOUR WHERE run_id = 'r-nochat'")
    wh.con.execute("UPDATE runs SET finished_at = now() + INTERVAL 1 HOUR WHERE run_id IN ('r-two', 'r-balanced')")
    frame = wh.sql((QUERIES / "compare_with_published.sql").read_text())
    assert frame.height == 16 and frame["country"][-1] == "ALL" and set(frame["preset"]) == {"fork"}
    line = frame.filter(country="France", method="icm").row(0, named=True)
    assert line["difference_pct"] == pytest.approx(round(100 * ours["accuracy"] - 68.6, 1), abs=0.11)
    assert line["published_in_interval"] == france["published_in_interval"]


def test_a_fork_run_without_the_chat_baseline_says_so_instead_of_dropping_the_row(fork_warehouse):
    rows = fork_warehouse.sql("SELECT * FROM published_comparison WHERE run_id = 'r-nochat'")
    assert rows.height == 16
    assert set(rows.filter(method="zero_shot_chat")["published_in_interval"]) == {"not evaluated"}
    assert rows.filter(method="zero_shot_chat")["accuracy_pct"].is_null().all()


def test_report_of_a_fork_protocol_run_has_the_comparison_chart_and_table(fork_warehouse, tmp_path):
    wh = fork_warehouse
    files = write_report(wh.sql, "r-fork", tmp_path / "fork")
    assert "published_comparison" in files.charts
    png, svg = files.charts["published_comparison"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and ET.parse(svg).getroot().tag.endswith("svg")
    spec = json.loads(png.with_suffix(".vl.json").read_text())
    (data,) = spec["datasets"].values()
    assert len(data) == 16 and {d["country"] for d in data} == {"United States", "France", "Japan", "All countries (weighted)"}
    page = files.html.read_text()
    assert 'id="published_comparison"' in page and "Against the published numbers" in page
    verdicts = wh.sql("SELECT published_in_interval FROM published_comparison WHERE run_id = 'r-fork'")["published_in_interval"]
    assert page.count("<td>inside</td>") == (verdicts == "inside").sum()
    assert page.count("<td>outside</td>") == (verdicts == "outside").sum()
    for run_id in ("r-two", "r-balanced"):
        other = write_report(wh.sql, run_id, tmp_path / run_id)
        assert "published_comparison" not in other.charts and "Against the published numbers" not in other.html.read_text()


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


def test_a_study_past_the_panel_limit_draws_only_the_aggregate_per_method_and_keeps_every_country_in_tables(
        world_warehouse, tmp_path, monkeypatch):
    import persona_icm.charts as charts
    from persona_icm.charts import AGGREGATE

    def countries_drawn(files, name):
        spec = json.loads(files.charts[name][0].with_suffix(".vl.json").read_text())
        return {row["country"] for rows in spec["datasets"].values() for row in rows if "country" in row}

    every = set(WORLD_COUNTRIES) | {AGGREGATE}
    files = write_report(world_warehouse.sql, "r-world", tmp_path / "panels")
    assert countries_drawn(files, "accuracy_by_method") == every

    monkeypatch.setattr(charts, "MAX_COUNTRY_PANELS", len(WORLD_COUNTRIES) - 1)
    files = write_report(world_warehouse.sql, "r-world", tmp_path / "aggregate")
    assert countries_drawn(files, "accuracy_by_method") == {AGGREGATE}
    page = files.html.read_text()
    assert f"With {len(WORLD_COUNTRIES)} countries, only their aggregate is drawn here" in page
    headline_table = page.split("<h2>Headline results</h2>", 1)[1].split("<h2>", 1)[0]
    assert all(country in headline_table for country in WORLD_COUNTRIES)
