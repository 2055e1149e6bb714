"""The method registry (persona_icm/methods.py) is the one place a method is declared: a method
registered here, in the test only, runs through config validation, evaluation, the warehouse views
and the charts."""

from __future__ import annotations

import json

import pydantic
import pytest

from persona_icm import methods
from persona_icm.charts import accuracy_by_method_chart, accuracy_vs_examples_chart
from persona_icm.config import EvalConfig, build_config
from persona_icm.evaluate import evaluate_country
from persona_icm.methods import Method
from persona_icm.metrics import evaluation_warehouse
from persona_icm.scoring.synthetic import SyntheticScorer, make_claims
from persona_icm.warehouse import open_warehouse

DUMMY = "all_true"
DUMMY_LABEL = "every demo True (test)"
DUMMY_COLOUR = "#e377c2"


def all_true_labels(claims, icm, rng):
    return [1] * len(claims)


@pytest.fixture
def dummy_method():
    methods.register(Method(DUMMY, label=DUMMY_LABEL, colour=DUMMY_COLOUR, in_curve=True, produce=all_true_labels))
    try:
        yield
    finally:
        methods.unregister(DUMMY)


def scale_of(spec: dict) -> dict:
    """The colour scale of a chart spec (layers and facets searched)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            colour = node.get("encoding", {}).get("color", {})
            if "scale" in colour and "range" in colour["scale"]:
                found.append(colour["scale"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    assert found, "no colour scale in the chart spec"
    return found[0]


def test_an_unknown_method_is_one_clear_error_naming_the_registered_ones():
    with pytest.raises(pydantic.ValidationError) as error:
        EvalConfig(methods=["golden", DUMMY])
    message = str(error.value)
    assert f"unknown method(s) ['{DUMMY}']" in message
    assert "registered: icm, golden, random_matched, zero_shot_base, zero_shot_chat, option_prior" in message


def test_the_built_in_records():
    assert methods.config_names() == ["icm", "golden", "random_matched", "zero_shot_base", "zero_shot_chat", "option_prior"]
    assert EvalConfig().methods == methods.config_names()
    assert [m.name for m in methods.stored_methods("option_prior")] == ["option_prior_golden", "option_prior_icm"]
    assert methods.zero_shot_names() == ["zero_shot_base", "zero_shot_chat"]
    assert [n for n in methods.config_names() if methods.uses_chat_model(n)] == ["zero_shot_chat"]
    assert [m.name for m in methods.listed() if m.in_curve] == ["icm", "golden", "random_matched"]
    assert [m.name for m in methods.methods()][:3] == ["golden", "icm", "random_matched"]  # scored in this order
    assert len({m.colour for m in methods.methods()}) == len(methods.methods())


def test_a_method_registered_in_a_test_flows_through_config_evaluation_warehouse_and_charts(dummy_method):
    # config: accepted, in the default list and in the JSON schema the Prefect UI shows
    cfg = build_config("seed", {"eval": {"eval_repeats": 2, "demo_sizes": [10], "bootstrap_samples": 100,
                                          "methods": ["golden", DUMMY, "zero_shot_base"]}}).eval
    assert DUMMY in EvalConfig().methods
    assert DUMMY in json.dumps(EvalConfig.model_json_schema()["properties"]["methods"])

    # evaluation: its predictions and demos, on the same demo claims and order as golden's
    claims = make_claims(30, seed=0)
    train, test = claims[:40], claims[40:]
    truth = {c.claim_id: c.gold for c in claims}
    result = evaluate_country(SyntheticScorer(truth, signal=1.5, noise=1.0), train, test, cfg, run_id="r")
    preds, demos = result.predictions, result.demos
    assert set(preds["method"]) == {"golden", DUMMY, "zero_shot_base"}
    assert preds.filter(method=DUMMY).height == preds.filter(method="golden").height == 2 * 2 * len(test)
    assert set(demos.filter(method=DUMMY)["label"]) == {1}
    keys = ["experiment", "n_demos", "repeat", "position", "claim_id"]
    assert demos.filter(method=DUMMY).select(keys).equals(demos.filter(method="golden").select(keys))

    # warehouse: its row in `methods`, and in accuracy, results_by_country, headline, the curve
    with evaluation_warehouse(preds, demos, n_boot=100) as wh:
        registered = wh.sql("SELECT * FROM methods WHERE method = $m", {"m": DUMMY}).to_dicts()
        assert registered == [{"method": DUMMY, "position": len(methods.methods()) - 1, "label": DUMMY_LABEL,
                               "colour": DUMMY_COLOUR, "config_name": DUMMY, "uses_icm_labels": False,
                               "uses_chat_model": False, "uses_demos": True, "in_curve": True}]
        assert wh.scalar("SELECT count(*) FROM accuracy WHERE method = $m", {"m": DUMMY}) == 2 * 2
        by_country = wh.sql("SELECT * FROM results_by_country WHERE method = $m ORDER BY experiment", {"m": DUMMY})
        assert by_country["experiment"].to_list() == ["curve", "main"]
        assert by_country["demo_label_accuracy"].is_not_null().all() and by_country["ci_low"].is_not_null().all()
        headline = wh.sql("SELECT * FROM headline WHERE run_id = 'r'")
        assert set(headline["method"]) == {"golden", DUMMY, "zero_shot_base"}
        vs_examples = wh.sql("SELECT * FROM accuracy_vs_examples WHERE run_id = 'r'")
        assert set(vs_examples["method"]) == {"golden", DUMMY}  # in_curve; zero-shot is not
        curve = wh.sql("SELECT DISTINCT method FROM results_aggregated WHERE experiment = 'curve'")
        assert set(curve["method"]) == {"golden", DUMMY}

    # charts: its label and colour, after the built-ins
    for chart in (accuracy_by_method_chart(headline), accuracy_vs_examples_chart(vs_examples)):
        scale = scale_of(chart.to_dict())
        assert scale["domain"][-1] == DUMMY_LABEL and scale["range"][-1] == DUMMY_COLOUR
        assert dict(zip(scale["domain"], scale["range"], strict=True))["golden labels"] == "#2ca02c"


def test_the_methods_table_follows_the_registry_on_open(tmp_path, dummy_method):
    db = tmp_path / "w.duckdb"
    with open_warehouse(db) as wh:
        assert DUMMY in set(wh.sql("SELECT method FROM methods")["method"])
        first = wh.sql("SELECT * FROM methods ORDER BY position")
    with open_warehouse(db) as wh:  # unchanged registry: the same rows
        assert wh.sql("SELECT * FROM methods ORDER BY position").equals(first)
    methods.unregister(DUMMY)
    try:
        with open_warehouse(db) as wh:
            rows = wh.sql("SELECT method FROM methods ORDER BY position")["method"].to_list()
        assert rows == [m.name for m in methods.listed()] and DUMMY not in rows
    finally:
        methods.register(Method(DUMMY, label=DUMMY_LABEL, colour=DUMMY_COLOUR, produce=all_true_labels))


def test_a_chat_model_method_is_scored_by_the_chat_model_alone():
    name = "zero_shot_chat_again"
    methods.register(Method(name, label="chat again", colour="#000000", uses_demos=False, uses_chat_model=True))
    try:
        from tasks.evaluation import chat_methods

        assert chat_methods(["golden", "zero_shot_chat", name]) == ["zero_shot_chat", name]
        claims = make_claims(20, seed=1)
        train, test = claims[:20], claims[20:]
        truth = {c.claim_id: c.gold for c in claims}
        base, chat = SyntheticScorer(truth), SyntheticScorer(truth, signal=2.0)
        cfg = build_config("seed", {"eval": {"eval_repeats": 1, "demo_sizes": [], "methods": [name]}}).eval
        result = evaluate_country(base, train, test, cfg, chat_scorer=chat)
        assert set(result.predictions["method"]) == {name} and not base.calls and len(chat.calls) == 1
        skipped = evaluate_country(base, train, test, cfg)
        assert skipped.skipped == {name: "no chat model configured"} and skipped.predictions.is_empty()
    finally:
        methods.unregister(name)
