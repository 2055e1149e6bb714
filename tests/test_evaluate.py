import numpy as np
import polars as pl
import pytest

from persona_icm.claims import Claim
from persona_icm.config import EvalConfig, build_config
from persona_icm.evaluate import (
    NO_ICM_SEED,
    accuracy_matched_labels,
    curve_sizes,
    evaluate_country,
    labels_from_frame,
    option_prior_scores,
    sample_whole_groups,
)
from persona_icm.metrics import evaluation_warehouse
from persona_icm.scoring.synthetic import SyntheticScorer, make_claims


class RecordingScorer(SyntheticScorer):
    """The synthetic scorer, also keeping every request it was asked to score."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requests = []

    def score(self, requests):
        self.requests.extend(requests)
        return super().score(requests)


def split(n_train_groups=22, n_test_groups=15, seed=0):
    claims = make_claims(n_train_groups + n_test_groups, seed=seed)
    return claims[: 2 * n_train_groups], claims[2 * n_train_groups :]


def noisy_labels(claims, accuracy, seed=0):
    """Gold labels of `claims` with round((1-accuracy) * n) of them flipped."""
    rng = np.random.default_rng(seed)
    wrong = set(
        rng.choice(len(claims), size=round((1 - accuracy) * len(claims)), replace=False).tolist()
    )
    return {c.claim_id: 1 - c.gold if i in wrong else c.gold for i, c in enumerate(claims)}


def config(**eval_overrides):
    return build_config(
        "seed", {"eval": {"eval_repeats": 3, "demo_sizes": [10, 15, 20], **eval_overrides}}
    ).eval


def results(predictions, demos=None):
    """results_by_country (with metrics.n_icm_seeds) of an evaluation, from the warehouse views."""
    with evaluation_warehouse(predictions, demos, n_boot=100) as wh:
        return wh.sql("SELECT r.*, m.n_icm_seeds FROM results_by_country r JOIN metrics m USING (run_id, country, method, experiment, n_demos)")


def claim_acc(metrics, method, experiment="main"):
    row = metrics.filter(pl.col("method") == method, pl.col("experiment") == experiment)
    assert row.height == 1, row
    return row["accuracy"].item()


def test_golden_beats_random_matched_beats_inverted_gold():
    train, test = split(n_train_groups=30, n_test_groups=30)
    truth = {c.claim_id: c.gold for c in train + test}
    scorer = SyntheticScorer(truth, signal=1.5, noise=1.0)
    icm = noisy_labels(train, accuracy=0.7)
    result = evaluate_country(scorer, train, test, config(), icm_labels=icm)
    metrics = results(result.predictions, result.demos)
    inverted = evaluate_country(
        scorer, train, test, config(), icm_labels={c.claim_id: 1 - c.gold for c in train}
    )
    inverted_acc = claim_acc(results(inverted.predictions), "icm")

    golden, matched = claim_acc(metrics, "golden"), claim_acc(metrics, "random_matched")
    assert golden >= matched >= inverted_acc
    assert golden - inverted_acc > 0.3
    assert metrics.filter(method="golden", experiment="main")["demo_label_accuracy"].item() == 1.0
    assert metrics.filter(method="icm", experiment="main")["demo_label_accuracy"].item() == pytest.approx(0.7, abs=0.02)


def test_random_matched_has_icm_label_accuracy_on_the_same_claims_in_the_same_order():
    train, test = split()
    icm = noisy_labels(train, accuracy=0.75, seed=3)
    result = evaluate_country(
        SyntheticScorer({c.claim_id: c.gold for c in train + test}),
        train,
        test,
        config(),
        icm_labels=icm,
    )
    keys = ["experiment", "n_demos", "repeat"]
    sets = result.demos.group_by([*keys, "method"]).agg(
        pl.col("claim_id"), wrong=(pl.col("label") != pl.col("gold")).sum()
    )
    by_method = {
        m: sets.filter(method=m).drop("method").sort(keys)
        for m in ("icm", "golden", "random_matched")
    }
    assert (
        by_method["icm"]["claim_id"].to_list() == by_method["random_matched"]["claim_id"].to_list()
    )
    assert by_method["icm"]["claim_id"].to_list() == by_method["golden"]["claim_id"].to_list()
    assert by_method["icm"]["wrong"].to_list() == by_method["random_matched"]["wrong"].to_list()
    assert by_method["golden"]["wrong"].sum() == 0
    assert by_method["icm"]["wrong"].sum() > 0
    # Flipped claims are a random subset, not ICM's own mistakes.
    rm = result.demos.filter(method="random_matched", experiment="main")
    gold = {c.claim_id: c.gold for c in train}
    flipped = set(rm.filter(pl.col("label") != pl.col("gold"), repeat=0)["claim_id"])
    assert len(flipped) == sum(icm[c] != gold[c] for c in icm)
    assert flipped != {c for c in icm if icm[c] != gold[c]}


def test_zero_shot_does_not_depend_on_demos():
    train, test = split()
    truth = {c.claim_id: c.gold for c in train + test}
    scorer = RecordingScorer(truth)
    a = evaluate_country(scorer, train, test, config(), icm_labels=noisy_labels(train, 0.6))
    b = evaluate_country(
        scorer,
        train[:20],
        test,
        config(eval_repeats=1),
        icm_labels=noisy_labels(train[:20], 0.9, seed=5),
    )
    zero = [r for r in scorer.requests if r.context == ()]
    assert len(zero) == 2 * len(test)
    for result in (a, b):
        assert result.predictions.filter(method="zero_shot_base")["n_demos"].unique().to_list() == [
            0
        ]
    cols = ["claim_id", "score", "pred"]
    assert (
        a.predictions.filter(method="zero_shot_base")
        .select(cols)
        .equals(b.predictions.filter(method="zero_shot_base").select(cols))
    )


def test_accuracy_vs_demos_has_every_size_repeat_and_demo_count():
    train, test = split(n_train_groups=22)  # pool of 44 claims
    result = evaluate_country(
        SyntheticScorer({c.claim_id: c.gold for c in train + test}),
        train,
        test,
        config(eval_repeats=3, demo_sizes=[10, 15, 20, 100]),
        icm_labels=noisy_labels(train, 0.8),
    )
    sets = result.demos.group_by("method", "experiment", "n_demos", "repeat").agg(
        used=pl.len(), groups=pl.col("claim_id").str.slice(0, 4).n_unique()
    )
    for method in ("icm", "golden", "random_matched"):
        rows = sets.filter(method=method).sort("n_demos", "repeat")
        assert rows["n_demos"].to_list() == [10] * 3 + [15] * 3 + [20] * 3 + [44] * 3
        assert rows["repeat"].to_list() == [0, 1, 2] * 4
        assert (
            rows["used"].to_list() == [10] * 3 + [14] * 3 + [20] * 3 + [44] * 3
        )  # whole groups of 2
        assert (rows["used"] == 2 * rows["groups"]).all()
        assert rows.filter(n_demos=44)["experiment"].unique().to_list() == ["main"]
    preds = result.predictions.filter(method="golden")
    assert preds.height == 12 * len(test)
    # Curve repeats draw different claims; the main orders are permutations of the whole pool.
    curve = result.demos.filter(method="golden", n_demos=10)
    assert (
        curve.filter(repeat=0)["claim_id"].sort().to_list()
        != curve.filter(repeat=1)["claim_id"].sort().to_list()
    )
    main = result.demos.filter(method="golden", experiment="main")
    assert (
        main.filter(repeat=0)["claim_id"].to_list() != main.filter(repeat=1)["claim_id"].to_list()
    )
    assert main.filter(repeat=0)["claim_id"].sort().to_list() == sorted(c.claim_id for c in train)


def test_batched_calls_and_identical_to_one_prompt_at_a_time():
    train, test = split()
    truth = {c.claim_id: c.gold for c in train + test}
    cfg = config(eval_repeats=3, demo_sizes=[10, 20])
    chat, slow_chat = SyntheticScorer(truth, seed=7), SyntheticScorer(truth, seed=7)
    fast_scorer, slow_scorer = SyntheticScorer(truth), SyntheticScorer(truth)
    icm = noisy_labels(train, 0.8)
    fast = evaluate_country(fast_scorer, train, test, cfg, icm_labels=icm, chat_scorer=chat)
    slow = evaluate_country(
        slow_scorer, train, test, cfg, icm_labels=icm, chat_scorer=slow_chat, batched=False
    )

    n_methods, n_sizes = 6, 3  # 10, 20 and the pool
    assert len(fast_scorer.calls) + len(chat.calls) <= n_methods * cfg.eval_repeats * n_sizes
    assert len(chat.calls) == 1
    assert (
        len(fast_scorer.calls) == 3 * cfg.eval_repeats * n_sizes + 1
    )  # three labellings per order + zero-shot base
    assert all(call.n_prompts == len(test) for call in fast_scorer.calls)
    assert len(slow_scorer.calls) == len(fast_scorer.calls) * len(test)
    assert fast.predictions.equals(slow.predictions)
    assert fast.demos.equals(slow.demos)


def test_same_seed_same_result_and_methods_do_not_shift_each_others_demos():
    train, test = split()
    truth = {c.claim_id: c.gold for c in train + test}
    icm = noisy_labels(train, 0.8)
    full = evaluate_country(
        SyntheticScorer(truth), train, test, config(), icm_labels=icm, rng=np.random.default_rng(4)
    )
    again = evaluate_country(
        SyntheticScorer(truth), train, test, config(), icm_labels=icm, rng=np.random.default_rng(4)
    )
    golden_only = evaluate_country(
        SyntheticScorer(truth),
        train,
        test,
        config(methods=["golden"]),
        icm_labels=icm,
        rng=np.random.default_rng(4),
    )
    other = evaluate_country(
        SyntheticScorer(truth), train, test, config(), icm_labels=icm, rng=np.random.default_rng(5)
    )
    assert full.predictions.equals(again.predictions)
    assert golden_only.predictions["method"].unique().to_list() == ["golden"]
    assert golden_only.predictions.equals(full.predictions.filter(method="golden"))
    assert not other.demos.equals(full.demos)


def test_zero_shot_chat_skipped_without_chat_model_and_scored_by_it_with_one():
    train, test = split()
    truth = {c.claim_id: c.gold for c in train + test}
    base = RecordingScorer(truth)
    result = evaluate_country(base, train, test, config(), icm_labels=noisy_labels(train, 0.8))
    assert result.skipped == {"zero_shot_chat": "no chat model configured"}
    assert "zero_shot_chat" not in result.predictions["method"].to_list()
    assert all(r.kind == "base" for r in base.requests)

    chat = RecordingScorer(truth, seed=9)
    with_chat = evaluate_country(
        base, train, test, config(), icm_labels=noisy_labels(train, 0.8), chat_scorer=chat
    )
    assert with_chat.skipped == {}
    assert len(chat.calls) == 1
    assert [r.kind for r in chat.requests] == ["chat"] * len(test)
    assert all(r.context == () for r in chat.requests)
    rows = with_chat.predictions.filter(method="zero_shot_chat")
    assert rows.height == len(test)
    assert rows["score"].to_list() == [chat.score_one(r) for r in chat.requests]


def test_without_icm_labels_golden_uses_all_train_claims_and_icm_methods_are_skipped():
    train, test = split()
    result = evaluate_country(
        SyntheticScorer({c.claim_id: c.gold for c in train + test}),
        train,
        test,
        config(methods=["icm", "golden", "random_matched"]),
    )
    assert set(result.skipped) == {"icm", "random_matched"}
    assert result.predictions["method"].unique().to_list() == ["golden"]
    assert result.predictions.filter(experiment="main")["n_demos"].unique().to_list() == [
        len(train)
    ]
    assert result.predictions["icm_seed"].unique().to_list() == [NO_ICM_SEED]


def test_icm_pool_is_labelled_claims_only_and_several_seeds_are_kept_apart():
    train, test = split()
    runs = {0: noisy_labels(train[:30], 0.8), 1: noisy_labels(train[:40], 0.9, seed=1)}
    result = evaluate_country(
        SyntheticScorer({c.claim_id: c.gold for c in train + test}),
        train,
        test,
        config(),
        icm_labels=runs,
    )
    main = result.demos.filter(experiment="main", repeat=0).group_by("method", "icm_seed").len()
    assert dict(main.filter(method="golden").select("icm_seed", "len").iter_rows()) == {
        0: 30,
        1: 40,
    }
    assert result.predictions.filter(method="zero_shot_base")["icm_seed"].unique().to_list() == [-1]
    metrics = results(result.predictions)
    assert metrics.filter(method="icm", n_demos=20)["n_icm_seeds"].item() == 2


def test_bad_inputs_are_named():
    train, test = split()
    scorer = SyntheticScorer({c.claim_id: c.gold for c in train + test})
    with pytest.raises(ValueError, match="both demo and test"):
        evaluate_country(scorer, train, test + train[:2], config())
    with pytest.raises(ValueError, match="not in the demo claims"):
        evaluate_country(scorer, train, test, config(), icm_labels={test[0].claim_id: 1})
    with pytest.raises(ValueError, match="several countries"):
        evaluate_country(scorer, train, make_claims(3, country="Elsewhere"), config())
    with pytest.raises(ValueError, match="must be 0 or 1"):
        evaluate_country(scorer, train, test, config(), icm_labels={train[0].claim_id: 2})
    with pytest.raises(ValueError, match="test claims are empty"):
        evaluate_country(scorer, train, [], config())


def test_option_prior_counts_exact_option_text_votes():
    def claim(i, option, gold=1):
        return Claim(f"c{i}", f"g{i // 2}", "X", f"q{i // 2}", option, gold)

    demos = [
        (claim(0, "Yes"), 1),
        (claim(1, "No"), 0),
        (claim(2, "Yes"), 1),
        (claim(3, "No"), 1),
        (claim(4, "Yes"), 0),
    ]
    test = [claim(10, "Yes"), claim(11, "No"), claim(12, "yes"), claim(13, "Maybe")]
    assert option_prior_scores(demos, test) == [1.0, 0.0, 0.0, 0.0]


def test_option_prior_rows_need_no_model_and_follow_the_demo_labels():
    train, test = split()
    icm = noisy_labels(train, 0.8)
    scorer = SyntheticScorer({c.claim_id: c.gold for c in train + test})
    result = evaluate_country(
        scorer, train, test, config(methods=["option_prior"], demo_sizes=[10]), icm_labels=icm
    )
    assert scorer.calls == []
    prior = result.predictions.filter(method="option_prior_golden")
    assert sorted(prior.filter(experiment="main")["repeat"].unique().to_list()) == [0]
    assert sorted(prior.filter(experiment="curve")["repeat"].unique().to_list()) == [0, 1, 2]
    assert result.predictions.filter(method="option_prior_icm").height == prior.height


def test_helpers():
    assert curve_sizes(44, [10, 20, 50, 20, 0]) == [10, 20, 44]
    assert curve_sizes(20, [10, 20]) == [10, 20]
    claims = make_claims(10)
    rng = np.random.default_rng(0)
    taken = sample_whole_groups(claims[:-1], 7, rng)  # last group is half present
    assert len(taken) <= 7 and len({c.group_id for c in taken}) * 2 >= len(taken)
    for c in taken:
        assert sum(x.group_id == c.group_id for x in taken) == sum(
            x.group_id == c.group_id for x in claims[:-1]
        )
    icm = {c.claim_id: 1 - c.gold if i < 3 else c.gold for i, c in enumerate(claims)}
    matched = accuracy_matched_labels(claims, icm, rng)
    assert sum(y != c.gold for y, c in zip(matched, claims, strict=True)) == 3


def test_labels_from_frame_drops_unlabelled_and_splits_seeds():
    frame = pl.DataFrame(
        {"claim_id": ["a", "b", "c", "a"], "label": [1, None, 0, 0], "icm_seed": [0, 0, 0, 1]}
    )
    assert labels_from_frame(frame) == {0: {"a": 1, "c": 0}, 1: {"a": 0}}
    by_country = frame.with_columns(country=pl.Series(["X", "X", "Y", "X"]))
    assert labels_from_frame(by_country, country="X") == {0: {"a": 1}, 1: {"a": 0}}
    assert labels_from_frame(frame.drop("icm_seed").head(3)) == {0: {"a": 1, "c": 0}}
    with pytest.raises(ValueError, match="more than once"):
        labels_from_frame(frame.drop("icm_seed"))
    with pytest.raises(ValueError, match="lacks column"):
        labels_from_frame(frame.drop("label"))


def test_progress_callback_counts_every_call():
    train, test = split()
    seen = []
    evaluate_country(
        SyntheticScorer({c.claim_id: c.gold for c in train + test}),
        train,
        test,
        EvalConfig(eval_repeats=2, demo_sizes=[10]),
        icm_labels=noisy_labels(train, 0.8),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [
        (i, 13) for i in range(1, 14)
    ]  # 2 sizes x 2 orders x 3 labellings + zero-shot base


def test_calls_are_recorded_under_eval_phases_and_the_phase_is_restored():
    class PhasedScorer(SyntheticScorer):
        """The synthetic scorer with a `phase` attribute, as CallLog backends have."""

        phase = "icm"

        def score(self, requests):
            self.seen_phases.append(self.phase)
            return super().score(requests)

    train, test = split()
    scorer = PhasedScorer({c.claim_id: c.gold for c in train + test})
    scorer.seen_phases = []
    evaluate_country(
        scorer, train, test, config(demo_sizes=[]), icm_labels=noisy_labels(train, 0.8)
    )
    # a call holds prompt sets of one method; methods in the order of their first set
    expected = ["eval:golden"] * 3 + ["eval:icm"] * 3 + ["eval:random_matched"] * 3 + ["eval:zero_shot_base"]
    assert scorer.seen_phases == expected
    assert scorer.phase == "icm"
