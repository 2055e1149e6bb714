"""The ICM diagnosis: U, P, I of gold, ICM's labels and gold flipped, gold's per-group ranking, the
verdict rule (view icm_diagnosis_verdict) and its warehouse rows."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from persona_icm.cli import diagnosis_lines
from persona_icm.config import build_config
from persona_icm.icm import run_icm
from persona_icm.icm.diagnosis import ENERGY_SCHEMA, GROUP_SCHEMA, diagnose
from persona_icm.scoring.base import ScoreRequest
from persona_icm.scoring.synthetic import SyntheticScorer, make_claims
from persona_icm.warehouse import open_warehouse, write_results


def searched(objective: str = "logodds_mean", engine: str = "fast", alpha: float = 3.5):
    claims = make_claims(6, seed=3)
    truth = {c.claim_id: c.gold for c in claims}
    config = build_config("seed").icm.model_copy(update={
        "iterations": 40, "num_seed": 4, "objective": objective, "engine": engine, "alpha": alpha})
    result = run_icm(claims, SyntheticScorer(truth, signal=0.4, noise=1.5), config, show_progress=False)
    return claims, truth, config, result


def by_hand(claims, scorer, context, objective, alpha):
    """U, P, I and the leave-one-out scores of a labelling, one prompt at a time (the spec's formulas)."""
    loo = {}
    for i, _ in context:
        demos = tuple((claims[j], y) for j, y in context if j != i)
        loo[i] = scorer.score_one(ScoreRequest(demos, claims[i], "base"))
    labels = dict(context)
    signed = [loo[i] if labels[i] == 1 else -loo[i] for i in sorted(labels)]
    P = float(np.mean(signed)) if objective == "logodds_mean" else float(np.sum(-np.logaddexp(0.0, -np.asarray(signed))))
    groups = {}
    for i, y in context:
        groups.setdefault(claims[i].group_id, []).append(y)
    inconsistent = sum(1 for ys in groups.values() if len(ys) == 2 and ys[0] == ys[1])
    return alpha * P - inconsistent, P, inconsistent, loo


@pytest.mark.parametrize("objective", ["logodds_mean", "logprob_sum"])
def test_diagnosis_energies_match_the_search_and_the_formulas_by_hand(objective):
    claims, truth, config, result = searched(objective)
    scorer = SyntheticScorer(truth, signal=0.4, noise=1.5)
    found = diagnose(claims, result.labels, scorer, config)
    energies = {r["labelling"]: r for r in found.energies.iter_rows(named=True)}
    assert list(energies) == ["gold", "icm", "gold_flipped"]

    # ICM's labelling is the search's final state: the same U the trace ends on, bit for bit
    last = result.trace.row(-1, named=True)
    assert (energies["icm"]["U"], energies["icm"]["P"], energies["icm"]["I"]) == (last["U"], last["P"], last["I"])

    labelled = result.labels.filter(pl.col("label").is_not_null()).sort("context_rank")
    index = {c.claim_id: i for i, c in enumerate(claims)}
    order = [index[cid] for cid in labelled["claim_id"]]
    assert energies["icm"]["claims"] == len(order) and energies["icm"]["label_accuracy"] == pytest.approx(
        float((labelled["label"] == labelled["gold"]).mean()))
    for name, label_of in (("gold", lambda c: c.gold), ("gold_flipped", lambda c: 1 - c.gold)):
        context = [(i, label_of(claims[i])) for i in order]
        U, P, inconsistent, loo = by_hand(claims, scorer, context, objective, config.alpha)
        assert energies[name]["U"] == pytest.approx(U, abs=1e-12) and energies[name]["P"] == pytest.approx(P, abs=1e-12)
        assert energies[name]["I"] == inconsistent and energies[name]["claims"] == len(order)
        if name == "gold":
            gold_loo = loo
    assert energies["gold"]["label_accuracy"] == 1.0 and energies["gold_flipped"]["label_accuracy"] == 0.0

    # per group whose two claims ICM labelled: the gold-True claim's leave-one-out score above its sibling's
    whole = [g for g in {claims[i].group_id for i in order} if sum(claims[i].group_id == g for i in order) == 2]
    assert found.groups.height == len(whole) > 0
    for row in found.groups.iter_rows(named=True):
        true, other = index[row["true_claim_id"]], index[row["other_claim_id"]]
        assert claims[true].gold == 1 and claims[other].gold == 0 and claims[true].group_id == row["group_id"]
        assert (row["true_score"], row["other_score"]) == (gold_loo[true], gold_loo[other])
        assert row["gold_ranked_first"] == (gold_loo[true] > gold_loo[other])
    assert found.energies.schema == pl.Schema(ENERGY_SCHEMA) and found.groups.schema == pl.Schema(GROUP_SCHEMA)


def test_diagnosis_costs_one_backend_call_and_the_reference_engine_agrees():
    claims, truth, config, result = searched()
    fast_scorer = SyntheticScorer(truth, signal=0.4, noise=1.5)
    fast = diagnose(claims, result.labels, fast_scorer, config)
    reference = diagnose(claims, result.labels, SyntheticScorer(truth, signal=0.4, noise=1.5),
                         config.model_copy(update={"engine": "reference"}))
    assert fast.energies.equals(reference.energies) and fast.groups.equals(reference.groups)
    n = int(result.labels["label"].is_not_null().sum())
    assert len(fast_scorer.calls) == 1 and fast_scorer.calls[0].n_prompts <= 3 * n


def test_calibrated_objective_is_diagnosed_with_its_zero_shot_scores():
    claims, truth, config, result = searched("logodds_calibrated")
    found = diagnose(claims, result.labels, SyntheticScorer(truth, signal=0.4, noise=1.5), config)
    icm = found.energies.filter(pl.col("labelling") == "icm").row(0, named=True)
    assert (icm["U"], icm["P"]) == (result.trace["U"][-1], result.trace["P"][-1])


def test_nothing_labelled_is_no_diagnosis():
    claims, truth, config, result = searched()
    empty = result.labels.with_columns(label=pl.lit(None, pl.Int8))
    assert diagnose(claims, empty, SyntheticScorer(truth), config) is None


def write_diagnosis(wh, run_id, country, seeds: dict[int, tuple[float, float, float]], ranked=(True, False)):
    """icm_diagnosis rows of (U_gold, U_icm, ICM label accuracy) per seed, and two groups."""
    energies, groups = [], []
    for seed, (u_gold, u_icm, accuracy) in seeds.items():
        for name, u, acc in (("gold", u_gold, 1.0), ("icm", u_icm, accuracy), ("gold_flipped", -1.0, 0.0)):
            energies.append({"labelling": name, "U": u, "P": u / 3.5, "I": 0, "claims": 4, "label_accuracy": acc, "icm_seed": seed})
        for k, first in enumerate(ranked):
            groups.append({"group_id": f"g{k}", "true_claim_id": f"t{k}", "true_score": 1.0, "other_claim_id": f"o{k}",
                           "other_score": 0.0 if first else 2.0, "gold_ranked_first": first, "icm_seed": seed})
    frames = {
        "icm_diagnosis": pl.DataFrame(energies, schema={**ENERGY_SCHEMA, "icm_seed": pl.Int32}),
        "icm_diagnosis_groups": pl.DataFrame(groups, schema={**GROUP_SCHEMA, "icm_seed": pl.Int32}),
    }
    return write_results(wh, run_id, country, "icm", frames)


def test_verdict_rule_and_its_lines():
    with open_warehouse(":memory:") as wh:
        write_diagnosis(wh, "r", "France", {0: (-0.113, -0.098, 0.75), 1: (-0.1, -0.2, 0.5), 2: (-0.1, -0.1, 0.5), 3: (0.2, 0.2, 1.0)})
        verdicts = dict(wh.sql("SELECT icm_seed, verdict FROM icm_diagnosis_verdict ORDER BY 1").iter_rows())
        assert verdicts == {0: "objective prefers other labels", 1: "search shortfall", 2: "objective prefers other labels",
                            3: "ICM's labels are gold"}
        row = wh.sql("SELECT * FROM icm_diagnosis_verdict WHERE icm_seed = 0").row(0, named=True)
        assert (row["groups"], row["gold_ranked_first"], row["U_flipped"]) == (2, 1, -1.0)
        lines = diagnosis_lines(wh, "r")
    assert lines[0] == (
        "France, seed 0: objective prefers other labels: U(ICM) -0.0980 >= U(gold) -0.1130 (P -0.0280 vs -0.0323, "
        "I 0 vs 0; U(gold flipped) -1.0000); ICM label accuracy 0.75 on 4 claims; gold's leave-one-out scores rank "
        "the right option first in 1 of 2 groups"
    )
    assert lines[1].startswith("France, seed 1: search shortfall: U(ICM) -0.2000 < U(gold) -0.1000")


def test_diagnosis_rows_are_replaced_per_run_and_country():
    with open_warehouse(":memory:") as wh:
        write_diagnosis(wh, "r", "France", {0: (-0.1, -0.2, 0.5), 1: (-0.1, -0.2, 0.5)})
        write_diagnosis(wh, "r", "Japan", {0: (-0.1, -0.2, 0.5)})
        first = wh.sql("SELECT * FROM icm_diagnosis_verdict ORDER BY ALL")
        write_diagnosis(wh, "r", "France", {0: (-0.1, -0.2, 0.5), 1: (-0.1, -0.2, 0.5)})
        assert wh.sql("SELECT * FROM icm_diagnosis_verdict ORDER BY ALL").equals(first)
        assert wh.scalar("SELECT count(*) FROM icm_diagnosis") == 9 and wh.scalar("SELECT count(*) FROM icm_diagnosis_groups") == 6
        write_diagnosis(wh, "r", "France", {0: (-0.1, 0.3, 0.5)})  # one seed now: seed 1's rows go
        assert wh.sql("SELECT country, icm_seed, verdict FROM icm_diagnosis_verdict ORDER BY ALL").rows() == [
            ("France", 0, "objective prefers other labels"), ("Japan", 0, "search shortfall")]
