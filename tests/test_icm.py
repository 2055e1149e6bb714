"""The ICM search: determinism, fast == reference, ConsistencyFix, recovery, resume, annealing."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import numpy as np
import polars as pl
import pytest

from persona_icm.config import IcmConfig, build_config
from persona_icm.icm import (
    LABELS_SCHEMA,
    TRACE_SCHEMA,
    TRAJECTORY_COLUMNS,
    IcmSearch,
    acceptance_probability,
    metropolis_accept,
    run_icm,
    temperature,
)
from persona_icm.icm.checkpoint import CheckpointMismatch, previous_path
from persona_icm.icm.engine import prefix_order
from persona_icm.icm.state import Labelling, Pool
from persona_icm.scoring.base import ScoreRequest
from persona_icm.scoring.synthetic import SyntheticScorer, make_claims


def icm_config(preset: str = "seed", **over) -> IcmConfig:
    return build_config(preset).icm.model_copy(update=over)


def truth_of(claims):
    return {c.claim_id: c.gold for c in claims}


def run(claims, config, show_progress=False, **scorer_kw):
    scorer = SyntheticScorer(truth_of(claims), **scorer_kw)
    return run_icm(claims, scorer, config, show_progress=show_progress), scorer


def trajectory(result):
    return result.trace.select(TRAJECTORY_COLUMNS)


def label_accuracy(result) -> float:
    labelled = result.labels.filter(pl.col("label").is_not_null())
    return float((labelled["label"] == labelled["gold"]).mean())


class RecordingScorer(SyntheticScorer):
    """SyntheticScorer that keeps every batch of requests it was sent."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.batches: list[list[ScoreRequest]] = []

    def score(self, requests):
        self.batches.append(list(requests))
        return super().score(requests)


class FailingScorer(SyntheticScorer):
    """SyntheticScorer that raises after `fail_after` backend calls: a killed worker."""

    def __init__(self, *args, fail_after: int, **kw):
        super().__init__(*args, **kw)
        self.fail_after = fail_after

    def score(self, requests):
        if len(self.calls) >= self.fail_after:
            raise RuntimeError("injected failure")
        return super().score(requests)


class AlwaysTrueScorer(SyntheticScorer):
    """Scores every query s = 5 whatever the context."""

    def score_one(self, request):
        return 5.0


# -- determinism and exactness --------------------------------------------------------------

def test_same_seed_same_trace_and_different_seed_different_trace():
    claims = make_claims(12)
    config = icm_config("smoke", iterations=40)
    a, _ = run(claims, config)
    b, _ = run(claims, config)
    c, _ = run(claims, config.model_copy(update={"seed": 1}))
    assert a.trace.equals(b.trace) and a.labels.equals(b.labels)
    assert not trajectory(a).equals(trajectory(c))


@pytest.mark.parametrize(
    "preset,seed,over",
    [
        ("seed", 0, {}),
        ("seed", 1, {"objective": "logprob_sum"}),
        ("paper", 2, {}),
        ("smoke", 3, {"schedule": "exp"}),
        ("smoke", 4, {"score_memo_size": 50}),  # LRU evictions change cost, never the result
        ("fork", 5, {}),  # no consistency term, claim-order demos, seed labels on the first claims
        ("seed", 6, {"objective": "logodds_calibrated"}),  # zero-shot scores fetched by both engines
        ("paper", 7, {"objective": "logodds_calibrated", "score_memo_size": 50}),
    ],
)
def test_fast_engine_follows_the_reference_trajectory_with_fewer_prompts_and_calls(preset, seed, over):
    claims = make_claims(15, seed=seed)
    config = icm_config(preset, iterations=60, seed=seed, num_seed=6, **over)
    fast, fast_scorer = run(claims, config.model_copy(update={"engine": "fast"}))
    ref, ref_scorer = run(claims, config.model_copy(update={"engine": "reference"}))
    assert trajectory(fast).equals(trajectory(ref))
    assert fast.labels.equals(ref.labels)
    assert fast.counters.proposed > 5  # the comparison covered real moves
    ref_prompts = sum(c.n_prompts for c in ref_scorer.calls)
    fast_prompts = sum(c.n_prompts for c in fast_scorer.calls)
    assert len(ref_scorer.calls) == ref_prompts == ref.counters.prompts_needed  # one prompt per call
    assert fast_prompts < ref_prompts
    assert len(fast_scorer.calls) * 5 < len(ref_scorer.calls)
    assert fast.counters.prompts == fast_prompts and fast.counters.backend_calls == len(fast_scorer.calls)


def test_context_order_is_entry_order_of_groups_with_members_adjacent():
    claims = make_claims(3)  # claims 0,1 = g000; 2,3 = g001; 4,5 = g002
    pool = Pool.from_claims(claims)
    lab = Labelling.empty(6).with_labels(pool, [(5, 1), (0, 0)]).with_labels(pool, [(4, 0), (3, 1)])
    assert lab.group_order == (2, 0, 1)
    assert lab.context(pool) == ((4, 0), (5, 1), (0, 0), (3, 1))


def test_fast_engine_sends_leave_one_out_prompts_prefix_sorted_in_one_call_alternating_direction():
    """Each call walks its prefix tree depth first (prompts sharing a prefix adjacent). Calls of one
    labelling alternate direction; a call of several labellings (a query sent more than once) walks
    opposite to the last one-labelling call and leaves the alternation alone."""
    claims = make_claims(10)
    scorer = RecordingScorer(truth_of(claims))
    result = run_icm(claims, scorer, icm_config("smoke", iterations=30, num_seed=6), show_progress=False)
    index = {c.claim_id: i for i, c in enumerate(claims)}
    big = [b for b in scorer.batches if len(b) > 3]
    assert big, "expected energy evaluations batched into one call"
    last_forwards, kinds = False, set()
    for batch in scorer.batches:
        keys = [prefix_order((index[r.query.claim_id], tuple((index[c.claim_id], y) for c, y in r.context))) for r in batch]
        if len(batch) > 1:
            assert keys in (sorted(keys), sorted(keys, reverse=True))
            forwards = keys == sorted(keys)
            assert forwards != last_forwards
            several = len({r.query.claim_id for r in batch}) < len(batch)
            kinds.add(several)
            if not several:
                last_forwards = forwards
        for r in batch:
            assert r.kind == "base" and r.query.claim_id not in {c.claim_id for c, _ in r.context}
    assert kinds == {True, False}, "expected calls of one and of several labellings"
    assert result.counters.backend_calls == len(scorer.batches)


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_fork_seeding_labels_the_first_claims_balanced_with_the_seeded_shuffle(engine):
    """seed_claims="first" (preset fork): the first num_seed claims in the order given, half True,
    the assignment drawn by the search's RNG; "random" (the paper's) picks other claims."""
    claims = make_claims(10, seed=3)

    def seeded(**over):
        config = icm_config("fork", iterations=1, num_seed=6, engine=engine, **over)
        search = IcmSearch(claims, SyntheticScorer(truth_of(claims)), config)
        search.seed_pool()
        return search.labelling.labels

    first = {seed: seeded(seed=seed) for seed in range(6)}
    for labels in first.values():
        assert all(y != -1 for y in labels[:6]) and all(y == -1 for y in labels[6:])
        assert sum(labels[:6]) == 3  # balanced, and no ConsistencyFix (fork: consistency off) moved them
    assert len({labels[:6] for labels in first.values()}) > 1  # the seed shuffles the assignment
    assert seeded(seed=0) == first[0]
    at_random = [seeded(seed=seed, seed_claims="random") for seed in range(6)]
    assert any(any(y != -1 for y in labels[6:]) for labels in at_random)


# -- ConsistencyFix -------------------------------------------------------------------------

def inconsistent_search(seed: int, alpha: float = 3.5, **scorer_kw):
    """A search whose state has every one of 8 groups labelled (True, True) or (False, False)."""
    claims = make_claims(8, seed=seed)
    scorer = SyntheticScorer(truth_of(claims), seed=seed, **scorer_kw)
    search = IcmSearch(claims, scorer, icm_config(alpha=alpha, seed=seed))
    labels = [(i, (i // 2) % 2) for i in range(len(claims))]  # group g gets (g%2, g%2)
    return search, Labelling.empty(len(claims)).with_labels(search.pool, labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_consistency_fix_makes_the_state_consistent_and_never_lowers_U(seed):
    search, start = inconsistent_search(seed)
    assert len(start.inconsistent_pairs(search.pool)) == 8
    energies = []
    for rounds in range(0, 10):  # same seed, one round more each time: the fix's path, step by step
        search, start = inconsistent_search(seed)
        fixed, energy, applied = search.consistency_fix(start, rounds)
        assert applied <= rounds
        energies.append(energy.U)
    assert all(b >= a for a, b in zip(energies, energies[1:], strict=False))
    assert energies[-1] > energies[0]
    assert energy.I == 0 and fixed.inconsistent_pairs(search.pool) == []


def test_consistency_fix_keeps_a_pair_it_cannot_fix_without_lowering_U():
    # With a huge alpha and a scorer that says every claim is True, (True, True) explains the
    # data best; breaking a pair costs more P than the 1 it saves in I.
    claims = make_claims(4)
    search = IcmSearch(claims, AlwaysTrueScorer(truth_of(claims)), icm_config(alpha=50.0, num_seed=2))
    start = Labelling.empty(8).with_labels(search.pool, [(i, 1) for i in range(8)])
    before = search.engine.energies([start])[0]
    fixed, energy, applied = search.consistency_fix(start, 10)
    assert applied == 0 and fixed == start and energy.U == before.U and energy.I == 4


def test_energy_terms_follow_the_spec():
    claims = make_claims(2)
    search = IcmSearch(claims, SyntheticScorer(truth_of(claims)), icm_config(alpha=2.0, num_seed=2))
    lab = Labelling.empty(4).with_labels(search.pool, [(0, 1), (1, 1), (2, 0), (3, 1)])
    e = search.engine.energies([lab])[0]
    context = lab.context(search.pool)
    signed = [s if y == 1 else -s for s, (_, y) in zip(e.scores, context, strict=True)]
    assert e.I == 1  # group g000 is (True, True)
    assert e.P == pytest.approx(np.mean(signed)) and e.U == pytest.approx(2.0 * e.P - 1)
    sum_search = IcmSearch(claims, SyntheticScorer(truth_of(claims)), icm_config(alpha=2.0, num_seed=2, objective="logprob_sum"))
    e2 = sum_search.engine.energies([lab])[0]
    assert e2.P == pytest.approx(sum(math.log(1 / (1 + math.exp(-z))) for z in signed))


def test_calibrated_objective_subtracts_each_claims_zero_shot_score():
    claims = make_claims(2)
    scorer = SyntheticScorer(truth_of(claims))
    lab = Labelling.empty(4).with_labels(Pool.from_claims(claims), [(0, 1), (1, 0), (2, 0), (3, 1)])
    plain = IcmSearch(claims, scorer, icm_config(alpha=2.0, num_seed=2)).engine.energies([lab])[0]
    for engine in ("fast", "reference"):
        search = IcmSearch(claims, scorer, icm_config(alpha=2.0, num_seed=2, objective="logodds_calibrated", engine=engine))
        e = search.engine.energies([lab])[0]
        context = lab.context(search.pool)
        zero_shot = [scorer.score_one(ScoreRequest((), claims[i], "base")) for i, _ in context]
        signed = [(s - z) if y == 1 else (z - s) for s, z, (_, y) in zip(e.scores, zero_shot, context, strict=True)]
        assert e.scores == plain.scores  # the same leave-one-out prompts
        assert e.P == pytest.approx(np.mean(signed)) and e.U == pytest.approx(2.0 * e.P)
        assert e.P != pytest.approx(plain.P)


# -- recovery -------------------------------------------------------------------------------

def test_recovers_hidden_truth_with_clear_signal():
    claims = make_claims(30, seed=7)  # 60 claims
    result, _ = run(claims, icm_config(iterations=200), signal=1.0, prior=1.0, noise=0.5)
    assert result.labels["label"].is_not_null().sum() >= 54
    assert label_accuracy(result) > 0.85
    assert result.trace["I"][-1] == 0


def test_consistency_term_helps_when_the_signal_is_weak():
    accuracy = {True: [], False: []}
    for seed in range(3):
        claims = make_claims(30, seed=seed)
        for consistency in (True, False):
            config = icm_config(iterations=150, seed=seed, consistency=consistency)
            result, _ = run(claims, config, signal=0.5, prior=0.5, noise=1.0, seed=seed)
            accuracy[consistency].append(label_accuracy(result))
    assert np.mean(accuracy[True]) > np.mean(accuracy[False]) + 0.05, accuracy


# -- checkpoints ----------------------------------------------------------------------------

def test_kill_and_resume_gives_the_uninterrupted_trace(tmp_path):
    claims = make_claims(12)
    truth = truth_of(claims)
    config = icm_config("smoke", iterations=50, checkpoint_every=7)
    whole = run_icm(claims, SyntheticScorer(truth), config, show_progress=False)
    path = tmp_path / "icm.json"
    with pytest.raises(RuntimeError, match="injected"):
        run_icm(claims, FailingScorer(truth, fail_after=40), config, checkpoint_path=path, show_progress=False)
    saved = json.loads(json.loads(path.read_text())["payload"])
    assert 0 < saved["iteration"] < 50
    resumed = run_icm(claims, SyntheticScorer(truth), config, checkpoint_path=path, show_progress=False)
    assert resumed.counters.resumed_from == saved["iteration"]
    assert trajectory(resumed).equals(trajectory(whole))
    assert resumed.labels.equals(whole.labels)
    # resuming a finished run sends nothing and returns the same result, also on the other engine
    again_scorer = SyntheticScorer(truth)
    again = run_icm(claims, again_scorer, config.model_copy(update={"engine": "reference"}), checkpoint_path=path,
                    show_progress=False)
    assert again_scorer.calls == [] and trajectory(again).equals(trajectory(whole))


def test_run_key_covers_gold_because_the_outputs_report_it():
    """A cached or checkpointed search must not come back with another dataset version's gold
    (trace train_accuracy, labels gold column), even though gold never steers the search."""
    from dataclasses import replace

    from persona_icm.icm import default_run_key

    claims = make_claims(6)
    config = icm_config("smoke")
    flipped = [replace(c, gold=1 - c.gold) for c in claims]
    assert default_run_key(claims, config) == default_run_key(list(claims), config)
    assert default_run_key(claims, config) != default_run_key(flipped, config)
    assert default_run_key(claims, config, "model-a") != default_run_key(claims, config, "model-b")
    assert default_run_key(claims, config) == default_run_key(claims, config.model_copy(update={"engine": "reference"}))


def test_checkpoint_for_another_run_is_refused(tmp_path):
    claims = make_claims(6)
    path = tmp_path / "icm.json"
    config = icm_config("smoke", iterations=5)
    run_icm(claims, SyntheticScorer(truth_of(claims)), config, checkpoint_path=path, show_progress=False)
    with pytest.raises(CheckpointMismatch, match="run key"):
        run_icm(claims, SyntheticScorer(truth_of(claims)), config.model_copy(update={"alpha": 1.0}),
                checkpoint_path=path, show_progress=False)


def _damage(path, how):
    text = path.read_text()
    path.write_text(text[: len(text) // 2] if how == "truncate" else text.replace('\\"accepted\\":', '\\"accepted\\": ', 1))


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
@pytest.mark.parametrize("previous_too", [False, True])
def test_damaged_checkpoint_is_logged_and_the_run_resumes_from_the_last_good_one(tmp_path, caplog, damage, previous_too):
    """A damaged checkpoint falls back to the one before it (<name>.prev); both damaged: from scratch."""
    claims = make_claims(8)
    config = icm_config("smoke", iterations=20, checkpoint_every=5)
    fresh = run_icm(claims, SyntheticScorer(truth_of(claims)), config, show_progress=False)
    path = tmp_path / "icm.json"
    with pytest.raises(RuntimeError):
        run_icm(claims, FailingScorer(truth_of(claims), fail_after=20), config, checkpoint_path=path, show_progress=False)
    latest = json.loads(json.loads(path.read_text())["payload"])["iteration"]
    previous = json.loads(json.loads(previous_path(path).read_text())["payload"])["iteration"]
    assert previous == latest - 5 > 0
    _damage(path, damage)
    if previous_too:
        _damage(previous_path(path), damage)
    with caplog.at_level(logging.WARNING, logger="persona_icm.icm"):
        restarted = run_icm(claims, SyntheticScorer(truth_of(claims)), config, checkpoint_path=path, show_progress=False)
    assert "damaged ICM checkpoint" in caplog.text
    assert restarted.counters.resumed_from == (None if previous_too else previous)
    assert restarted.trace.equals(fresh.trace)
    assert json.loads(path.read_text())["sha256"]  # rewritten, valid again


# -- annealing ------------------------------------------------------------------------------

def test_temperature_schedules():
    log_cfg = icm_config(initial_T=10.0, final_T=0.1, beta=2.75)
    assert temperature(log_cfg, 0) == 10.0
    assert temperature(log_cfg, 5) == pytest.approx(10.0 / (1 + 2.75 * math.log(6)))
    assert temperature(log_cfg, 10**40) == 0.1
    exp_cfg = icm_config(schedule="exp", initial_T=10.0, final_T=0.01, decay=0.9)
    assert temperature(exp_cfg, 3) == pytest.approx(10.0 * 0.9**3)
    assert temperature(exp_cfg, 10**6) == 0.01


def test_log_schedule_of_the_presets_stays_above_final_T_as_in_the_earlier_code():
    """docs/method.md: T = max(final_T, initial_T / (1 + beta ln(1 + accepted))), driven by accepted moves.
    With beta 2.75 (seed) or 0.99 (paper) the floor is never reached within K: the spec (and both
    codebases) define it so; the search must not silently rescale the schedule."""
    seed, paper = icm_config("seed"), icm_config("paper")
    assert temperature(seed, 1000) == pytest.approx(10.0 / (1 + 2.75 * math.log(1001))) == pytest.approx(0.50002, abs=1e-5)
    assert temperature(paper, 1000) == pytest.approx(10.0 / (1 + 0.99 * math.log(1001)), rel=1e-12)
    assert temperature(seed, 1000) > seed.final_T and temperature(paper, 1000) > paper.final_T
    # the floor binds only after exp((initial_T / final_T - 1) / beta) - 1 accepted moves
    tight = icm_config(initial_T=1.0, final_T=0.5, beta=1.0)
    assert temperature(tight, 1) == pytest.approx(1 / (1 + math.log(2))) and temperature(tight, 2) == 0.5
    # T is a function of accepted moves only: the trace's T follows accepted_total of the previous row
    claims = make_claims(8)
    result, _ = run(claims, icm_config("smoke", iterations=30))
    trace = result.trace
    cfg = icm_config("smoke")
    for previous_accepted, T in zip(trace["accepted_total"][:-1], trace["T"][1:], strict=True):
        assert T == temperature(cfg, previous_accepted)


def test_acceptance_has_no_overflow_at_tiny_T():
    with np.errstate(all="raise"):
        assert acceptance_probability(-1e300, 1e-300) == 0.0
        assert acceptance_probability(1e300, 1e-300) == 1.0
        assert acceptance_probability(0.0, 1e-300) == 1.0
    claims = make_claims(8)
    config = icm_config("smoke", iterations=30, initial_T=1e-300, final_T=1e-300)
    result, _ = run(claims, config)
    tried = result.trace.filter(pl.col("changed"))
    assert tried.height > 0
    # at T ~ 0 only non-worsening moves pass
    assert tried.filter(pl.col("accepted"))["delta_U"].min() >= 0


def test_acceptance_frequency_of_a_worse_state_follows_exp_dU_over_T():
    rng = np.random.default_rng(123)
    n = 20_000
    for delta, T in [(-1.0, 2.0), (-3.0, 1.5), (-0.2, 0.1)]:
        p = math.exp(delta / T)
        hits = sum(metropolis_accept(rng, delta, T) for _ in range(n))
        assert abs(hits / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9, (delta, T, hits / n, p)


# -- frames, progress, bad input --------------------------------------------------------------

def test_result_frames_and_progress():
    claims = make_claims(8)
    seen = []
    config = icm_config("smoke", iterations=25)
    result = run_icm(claims, SyntheticScorer(truth_of(claims)), config, on_progress=seen.append, show_progress=True)
    trace, labels = result.trace, result.labels
    assert dict(trace.schema) == TRACE_SCHEMA and dict(labels.schema) == LABELS_SCHEMA
    assert trace["iteration"].to_list() == list(range(26))
    assert [p.iteration for p in seen] == list(range(1, 26))
    assert trace["pool_size"].is_sorted()
    assert (trace["accepted"].is_null() == ~trace["changed"].fill_null(False)).all()
    assert trace["accepted_total"][-1] == result.counters.accepted == seen[-1].accepted
    assert labels.height == 16 and labels["claim_id"].to_list() == [c.claim_id for c in claims]
    ranked = labels.filter(pl.col("label").is_not_null())
    assert sorted(ranked["context_rank"].to_list()) == list(range(ranked.height))
    assert set(result.label_of()) == set(ranked["claim_id"])


def test_bad_claims_are_named():
    claims = make_claims(3)
    third = dataclasses.replace(claims[2], group_id=claims[0].group_id)  # a group of three
    with pytest.raises(ValueError, match="at most two"):
        run_icm([*claims[:2], third, *claims[3:]], SyntheticScorer(truth_of(claims)), icm_config("smoke"),
                show_progress=False)
    with pytest.raises(ValueError, match="unique"):
        run_icm(claims + claims[:1], SyntheticScorer(truth_of(claims)), icm_config("smoke"), show_progress=False)
    with pytest.raises(ValueError, match="num_seed"):
        run_icm(claims, SyntheticScorer(truth_of(claims)), icm_config("seed"), show_progress=False)


def test_a_group_of_one_is_searched_like_the_forks_cut_group():
    """The fork's split cuts one group (its other claim is in neither split): the pool takes it
    as a group of one, with no sibling and no consistency pair, on both engines alike."""
    claims = make_claims(15, seed=7)[:-1]
    config = icm_config("smoke", iterations=60, seed=7, num_seed=6)
    fast, _ = run(claims, config)
    ref, _ = run(claims, config.model_copy(update={"engine": "reference"}))
    assert trajectory(fast).equals(trajectory(ref)) and fast.labels.equals(ref.labels)
    pool = Pool.from_claims(claims)
    assert pool.sibling(len(claims) - 1) is None and pool.sibling(0) == 1
    lone = Labelling.empty(len(claims)).with_labels(pool, [(len(claims) - 1, 1), (0, 1), (1, 1)])
    assert lone.inconsistent_pairs(pool) == [(0, 1)]


@pytest.mark.slow
def test_fast_engine_matches_reference_at_seed_scale():
    """124 claims, K=1000 (the seed preset's size): identical trajectory, far fewer calls."""
    claims = make_claims(62, seed=5)
    config = icm_config("seed", seed=5)
    fast, fast_scorer = run(claims, config, prior=0.5)
    ref, ref_scorer = run(claims, config.model_copy(update={"engine": "reference"}), prior=0.5)
    assert trajectory(fast).equals(trajectory(ref)) and fast.labels.equals(ref.labels)
    assert len(fast_scorer.calls) * 50 < len(ref_scorer.calls)
    assert sum(c.n_prompts for c in fast_scorer.calls) < sum(c.n_prompts for c in ref_scorer.calls)
    assert label_accuracy(fast) > 0.85


def test_calls_are_tagged_with_the_icm_phase_and_the_phase_is_restored():
    class PhasedScorer(SyntheticScorer):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.phase = "eval"
            self.phases = []

        def score(self, requests):
            self.phases.append(self.phase)
            return super().score(requests)

    claims = make_claims(6)
    scorer = PhasedScorer(truth_of(claims))
    run_icm(claims, scorer, icm_config("smoke", iterations=10), show_progress=False)
    assert scorer.phases and set(scorer.phases) == {"icm"} and scorer.phase == "eval"
