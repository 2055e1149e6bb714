import numpy as np
import polars as pl
import pytest

from persona_icm.evaluate import PREDICTION_SCHEMA
from persona_icm.metrics import bootstrap_interval, evaluation_warehouse


def by_country(predictions: pl.DataFrame, n_boot: int = 200, seed: int = 0) -> pl.DataFrame:
    """results_by_country (the views' accuracies, metrics' intervals) plus metrics.n_icm_seeds."""
    with evaluation_warehouse(predictions, n_boot=n_boot, seed=seed) as wh:
        return wh.sql("SELECT r.*, m.n_icm_seeds FROM results_by_country r JOIN metrics m USING (run_id, country, method, experiment, n_demos) ORDER BY ALL")


def aggregated(predictions: pl.DataFrame, n_boot: int = 200) -> pl.DataFrame:
    with evaluation_warehouse(predictions, n_boot=n_boot) as wh:
        return wh.sql("SELECT * FROM results_aggregated ORDER BY ALL")


def predictions(
    country,
    method,
    n_demos,
    n_groups,
    accuracy,
    repeats=2,
    seed=0,
    icm_seed=-1,
    experiment="main",
):
    """Binary groups; each claim right with probability `accuracy` (seeded), scores +-1."""
    rng = np.random.default_rng(seed)
    rows = []
    for repeat in range(repeats):
        for g in range(n_groups):
            for k in range(2):
                gold = int(k == 0)
                right = rng.random() < accuracy
                pred = gold if right else 1 - gold
                rows.append(("r", country, method, experiment, n_demos, repeat, icm_seed, f"{country}{g}-{k}", f"{country}{g}",
                             1.0 if pred else -1.0, pred, gold))
    return pl.DataFrame(rows, schema=PREDICTION_SCHEMA, orient="row")


def exact(country, method, n_demos, n_groups, n_right_groups, experiment="main"):
    """Exactly `n_right_groups` groups fully right, the rest fully wrong; one order."""
    rows = []
    for g in range(n_groups):
        for k in range(2):
            gold = int(k == 0)
            pred = gold if g < n_right_groups else 1 - gold
            rows.append(("r", country, method, experiment, n_demos, 0, -1, f"{country}{g}-{k}", f"{country}{g}",
                         1.0 if pred else -1.0, pred, gold))
    return pl.DataFrame(rows, schema=PREDICTION_SCHEMA, orient="row")


def test_claim_and_group_accuracy_with_ties():
    rows = [
        ("r", "X", "m", "main", 0, 0, -1, "a0", "a", 2.0, 1, 1),  # group a: top right, claims 2/2
        ("r", "X", "m", "main", 0, 0, -1, "a1", "a", -1.0, 0, 0),
        ("r", "X", "m", "main", 0, 0, -1, "b0", "b", 0.5, 1, 1),  # group b: tie at the top -> 1/2
        ("r", "X", "m", "main", 0, 0, -1, "b1", "b", 0.5, 1, 0),
        ("r", "X", "m", "main", 0, 0, -1, "c0", "c", -3.0, 0, 1),  # group c: wrong on top, 0/2
        ("r", "X", "m", "main", 0, 0, -1, "c1", "c", -1.0, 0, 0),
    ]
    with evaluation_warehouse(pl.DataFrame(rows, schema=PREDICTION_SCHEMA, orient="row"), n_boot=100) as wh:
        acc = wh.sql("SELECT * FROM accuracy")
    assert acc["claim_accuracy"].item() == pytest.approx(4 / 6)
    assert acc["group_accuracy"].item() == pytest.approx(1.5 / 3)
    assert acc["n_groups"].item() == 3


def test_aggregation_weights_by_test_size_and_keeps_only_shared_demo_counts():
    frames = [
        exact("A", "golden", 40, n_groups=10, n_right_groups=10),  # acc 1.0 on 20 claims, pool 40
        exact("B", "golden", 50, n_groups=30, n_right_groups=15),  # acc 0.5 on 60 claims, pool 50
        exact("A", "golden", 10, 10, 10, "curve"),
        exact("B", "golden", 10, 30, 15, "curve"),
        exact("A", "golden", 20, 10, 10, "curve"),  # 20 only in A: dropped
        exact("A", "zero_shot_chat", 0, 10, 5),  # chat only in A: dropped
        exact("A", "zero_shot_base", 0, 10, 5),
        exact("B", "zero_shot_base", 0, 30, 30),
    ]
    agg = aggregated(pl.concat(frames))
    main = agg.filter(experiment="main").sort("method")
    assert main["method"].to_list() == ["golden", "zero_shot_base"]
    golden = main.filter(method="golden")
    assert golden["accuracy"].item() == pytest.approx((20 * 1.0 + 60 * 0.5) / 80)
    assert golden["n_demos"].item() is None  # pools of 40 and 50
    assert golden["n_test_claims"].item() == 80 and golden["n_countries"].item() == 2
    assert golden["ci_low"].item() is not None  # the pooled interval (metrics, country 'ALL') is joined
    assert main.filter(method="zero_shot_base")["accuracy"].item() == pytest.approx(
        (20 * 0.5 + 60 * 1.0) / 80
    )
    assert main.filter(method="zero_shot_base")["n_demos"].item() == 0
    curve = agg.filter(experiment="curve")
    assert curve["n_demos"].to_list() == [10]
    assert curve["accuracy"].item() == pytest.approx(0.625)


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_more_test_questions():
    widths = []
    for n_groups in (20, 80, 320):
        row = by_country(predictions("X", "golden", 10, n_groups, accuracy=0.7, repeats=3), n_boot=1000, seed=1).row(0, named=True)
        for name, low, high in (("accuracy", "ci_low", "ci_high"), ("group_accuracy", "group_ci_low", "group_ci_high")):
            assert row[low] <= row[name] <= row[high]
            assert row[low] < row[high]
        assert row["n_orders"] == 3 and row["n_test_groups"] == n_groups
        widths.append(row["ci_high"] - row["ci_low"])
    assert widths[0] > widths[1] > widths[2]
    # one order: question sampling alone, ~ 1/sqrt(n) (with several orders, their random spread adds)
    single = [by_country(predictions("X", "golden", 10, n, accuracy=0.7, repeats=1), n_boot=1000, seed=1).row(0, named=True) for n in (20, 320)]
    ratio = (single[0]["ci_high"] - single[0]["ci_low"]) / (single[1]["ci_high"] - single[1]["ci_low"])
    assert ratio == pytest.approx(4, rel=0.35)


def test_bootstrap_covers_icm_seeds_when_several():
    one = predictions("X", "icm", 10, 50, accuracy=0.7, icm_seed=0)
    two = pl.concat([one, predictions("X", "icm", 10, 50, accuracy=0.9, seed=1, icm_seed=1)])
    row1, row2 = (by_country(p, n_boot=1000).row(0, named=True) for p in (one, two))
    assert row1["n_icm_seeds"] == 1 and row2["n_icm_seeds"] == 2 and row2["n_orders"] == 4
    assert row2["ci_low"] <= row2["accuracy"] <= row2["ci_high"]
    # Seeds disagree (0.7 vs 0.9), so resampling them widens the interval beyond question sampling.
    assert row2["ci_high"] - row2["ci_low"] > row1["ci_high"] - row1["ci_low"]


def test_bootstrap_interval_is_exact_for_a_constant_and_stratified():
    rng = np.random.default_rng(0)
    assert bootstrap_interval(np.full((1, 5), 2.0), np.full(5, 2.0), np.zeros(5), 100, rng) == (
        1.0,
        1.0,
    )
    # Two strata of fixed weight: stratum sizes never change, so the estimate stays within its range.
    correct = np.array([[1.0] * 4 + [0.0] * 4])
    low, high = bootstrap_interval(correct, np.ones(8), np.array([0] * 4 + [1] * 4), 200, rng)
    assert low == high == 0.5


def test_bootstrap_interval_covers_the_spread_between_demo_orders():
    """docs/method.md "Evaluation protocol": the interval covers order-to-order variation as well as test sampling.
    Two orders, one all right and one all wrong, with every question alike: averaging orders
    before resampling questions (the earlier code) gave the zero-width interval [0.5, 0.5]."""
    right = exact("X", "icm", 10, n_groups=40, n_right_groups=40)
    wrong = exact("X", "icm", 10, n_groups=40, n_right_groups=0).with_columns(repeat=pl.lit(1, pl.Int64))
    row = by_country(pl.concat([right, wrong]), n_boot=400).row(0, named=True)
    assert row["accuracy"] == 0.5 and row["n_orders"] == 2
    assert row["ci_low"] == 0.0 and row["ci_high"] == 1.0
    assert row["group_ci_low"] == 0.0 and row["group_ci_high"] == 1.0
    # orders that agree add nothing: the interval is question sampling alone
    same = exact("X", "icm", 10, n_groups=40, n_right_groups=20)
    twice = pl.concat([same, same.with_columns(repeat=pl.lit(1, pl.Int64))])
    once_row, twice_row = (by_country(p, n_boot=400, seed=3).row(0, named=True) for p in (same, twice))
    assert twice_row["ci_low"] < 0.5 < twice_row["ci_high"]
    assert (twice_row["ci_high"] - twice_row["ci_low"]) == pytest.approx(once_row["ci_high"] - once_row["ci_low"], abs=0.06)
