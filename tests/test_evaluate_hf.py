"""Evaluation end to end through the transformers backend on a tiny random Llama (plumbing only)."""

import math

import polars as pl
import pytest

from persona_icm.config import EvalConfig
from persona_icm.evaluate import evaluate_country
from persona_icm.metrics import evaluation_warehouse
from persona_icm.scoring.hf import HFScorer
from persona_icm.tiny_model import build_model, build_tokenizer, make_claims


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer(add_bos=True)
    return build_model(len(tokenizer), head_dim=16), tokenizer


def test_evaluation_through_hf_backend(tiny):
    model, tokenizer = tiny
    claims = make_claims(16)
    train, test = claims[:10], claims[10:]
    icm = {c.claim_id: 1 - c.gold if i % 3 == 0 else c.gold for i, c in enumerate(train)}
    cfg = EvalConfig(eval_repeats=2, demo_sizes=[4], bootstrap_samples=100)
    base, chat = (
        HFScorer(model, tokenizer, progress=False),
        HFScorer(model, tokenizer, progress=False),
    )
    result = evaluate_country(
        base, train, test, cfg, icm_labels=icm, chat_scorer=chat, run_id="tiny"
    )

    preds = result.predictions
    assert result.skipped == {}
    expected_methods = {"icm", "golden", "random_matched", "zero_shot_base", "zero_shot_chat"}
    assert expected_methods | {"option_prior_golden", "option_prior_icm"} == set(preds["method"])
    assert all(math.isfinite(s) for s in preds["score"])
    assert (preds["pred"] == (preds["score"] > 0).cast(pl.Int8)).all()
    # One backend call per (labelling, size, order) with every test claim, plus zero-shot base.
    assert len(base.calls) == 3 * 2 * 2 + 1
    assert all(c.n_prompts == len(test) and c.phase.startswith("eval:") for c in base.calls)
    assert [c.phase for c in chat.calls] == ["eval:zero_shot_chat"]
    # The model reads the demo labels: golden and ICM contexts of one order score differently.
    one_order = preds.filter(experiment="main", repeat=0)
    assert (
        one_order.filter(method="golden")["score"].to_list()
        != one_order.filter(method="icm")["score"].to_list()
    )

    reference = evaluate_country(
        HFScorer(model, tokenizer, prefix_reuse=False, batch_size=1, progress=False),
        train, test, cfg, icm_labels=icm,
        chat_scorer=HFScorer(model, tokenizer, prefix_reuse=False, batch_size=1, progress=False),
        run_id="tiny", batched=False,
    )
    assert reference.predictions.drop("score", "pred").equals(preds.drop("score", "pred"))
    assert reference.predictions["score"].to_list() == pytest.approx(
        preds["score"].to_list(), abs=1e-4
    )

    with evaluation_warehouse(preds, result.demos, n_boot=100) as wh:
        assert set(wh.sql("SELECT method FROM results_by_country WHERE experiment = 'main'")["method"]) == set(preds["method"])
        assert wh.scalar("SELECT count(*) FROM results_aggregated") > 0


def test_prompt_sets_packed_into_calls_score_exactly_as_one_set_per_call(tiny):
    """A call takes as many whole prompt sets of one method as the scorer's prompts_per_call holds
    (hf: batch_size rows; 18 rows here, 6 test claims: 3 sets a call). Scores, demos and the random
    draws equal the one-set-per-call path's; progress still counts each set; each call's record
    holds its prompts under its method's phase."""
    import numpy as np

    model, tokenizer = tiny
    claims = make_claims(16)
    train, test = claims[:10], claims[10:]
    icm = {c.claim_id: 1 - c.gold if i % 3 == 0 else c.gold for i, c in enumerate(train)}
    cfg = EvalConfig(eval_repeats=2, demo_sizes=[4], bootstrap_samples=100)
    runs = {}
    for name, per_call in (("one", 1), ("packed", None)):
        scorer, rng, seen = HFScorer(model, tokenizer, batch_size=18, progress=False), np.random.default_rng(5), []
        result = evaluate_country(scorer, train, test, cfg, icm_labels=icm, rng=rng, prompts_per_call=per_call,
                                  progress=lambda done, total, seen=seen: seen.append((done, total)))
        runs[name] = (scorer, rng, seen, result)
    (one, one_rng, one_seen, one_result), (packed, packed_rng, packed_seen, packed_result) = runs["one"], runs["packed"]

    assert packed.prompts_per_call == 18
    assert packed_result.predictions.equals(one_result.predictions)  # bit for bit
    assert packed_result.demos.equals(one_result.demos)
    assert packed_rng.bit_generator.state == one_rng.bit_generator.state  # the same draws, nothing more
    sets = 3 * 2 * 2 + 1  # (golden, icm, random_matched) x 2 sizes x 2 orders + zero-shot base
    assert one_seen == packed_seen == [(i, sets) for i in range(1, sets + 1)]
    assert len(one.calls) == sets
    assert [(c.phase, c.n_prompts) for c in packed.calls] == [
        (f"eval:{method}", n * len(test)) for method in ("golden", "icm", "random_matched") for n in (3, 1)
    ] + [("eval:zero_shot_base", len(test))]
    assert sum(c.prompt_tokens for c in packed.calls) == sum(c.prompt_tokens for c in one.calls)
