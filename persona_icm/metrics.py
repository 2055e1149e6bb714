"""Accuracy metrics, computed from the predictions frame only (persona_icm/evaluate.py).

- claim accuracy: share of test claims with pred == gold (pred = score > 0).
- group accuracy: share of test questions whose gold-True option has the highest score; a tie
  for the highest score earns 1/(number tied) when the gold-True option is among them (the
  expected accuracy of breaking the tie at random; option-prior scores tie often).
- mean and std (ddof 1; null for a single order) over orders, and over ICM seeds when several.
- 95% percentile-bootstrap interval: resample test questions with replacement (within each
  country when countries are pooled), the demo orders (within each ICM seed) and, with several
  ICM seeds, the seeds; orders and questions are crossed (every order scores every question), so
  each is resampled on its own. It covers the order-to-order spread of the reported mean as well
  as test-set sampling (ICM_SPEC "Metrics").
- demo_label_acc: share of demos whose label equals gold (from the demos frame): for `icm` this
  is ICM's label accuracy, for `random_matched` it equals it by construction, golden is 1.

Metrics frame columns: run_id, country ("ALL" for the cross-country aggregate), method,
experiment, n_demos (null in an aggregate row whose countries differ in pool size), n_countries,
n_icm_seeds, n_orders, n_test_claims, n_test_groups, claim_acc, claim_acc_std,
claim_acc_ci_low, claim_acc_ci_high, group_acc, group_acc_std, group_acc_ci_low,
group_acc_ci_high, demo_label_acc.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from persona_icm.evaluate import NO_ICM_SEED

ALL_COUNTRIES = "ALL"
_ORDER = ["icm_seed", "repeat"]
METRIC_SCHEMA = {
    "run_id": pl.String,
    "country": pl.String,
    "method": pl.String,
    "experiment": pl.String,
    "n_demos": pl.Int64,
    "n_countries": pl.Int64,
    "n_icm_seeds": pl.Int64,
    "n_orders": pl.Int64,
    "n_test_claims": pl.Int64,
    "n_test_groups": pl.Int64,
    "claim_acc": pl.Float64,
    "claim_acc_std": pl.Float64,
    "claim_acc_ci_low": pl.Float64,
    "claim_acc_ci_high": pl.Float64,
    "group_acc": pl.Float64,
    "group_acc_std": pl.Float64,
    "group_acc_ci_low": pl.Float64,
    "group_acc_ci_high": pl.Float64,
    "demo_label_acc": pl.Float64,
}


def group_outcomes(predictions: pl.DataFrame) -> pl.DataFrame:
    """One row per (prompt set, test question): claims right, claims, group credit."""
    is_top = pl.col("score") == pl.col("score").max()
    keys = [
        "run_id",
        "country",
        "method",
        "experiment",
        "n_demos",
        "icm_seed",
        "repeat",
        "group_id",
    ]
    return predictions.group_by(keys).agg(
        claims_correct=(pl.col("pred") == pl.col("gold")).sum().cast(pl.Float64),
        n_claims=pl.len().cast(pl.Float64),
        group_correct=(is_top & (pl.col("gold") == 1)).sum() / is_top.sum(),
    )


def order_accuracy(predictions: pl.DataFrame) -> pl.DataFrame:
    """Claim and group accuracy of every evaluated prompt set (one row per order)."""
    keys = ["run_id", "country", "method", "experiment", "n_demos", "icm_seed", "repeat"]
    return (
        group_outcomes(predictions)
        .group_by(keys)
        .agg(
            claim_acc=pl.col("claims_correct").sum() / pl.col("n_claims").sum(),
            group_acc=pl.col("group_correct").mean(),
            n_test_claims=pl.col("n_claims").sum().cast(pl.Int64),
            n_test_groups=pl.len().cast(pl.Int64),
        )
        .sort(keys, nulls_last=True)
    )


def summarize(
    predictions: pl.DataFrame, demos: pl.DataFrame | None = None, n_boot: int = 1000, seed: int = 0
) -> pl.DataFrame:
    """Per country, method and demo count: mean, std and 95% bootstrap interval of both accuracies."""
    rng = np.random.default_rng(seed)
    outcomes = group_outcomes(predictions)
    keys = ["run_id", "country", "method", "experiment", "n_demos"]
    rows = [
        _summary_row(dict(zip(keys, key, strict=True)), part, n_boot, rng)
        for key, part in _parts(outcomes, keys)
    ]
    return _with_label_accuracy(pl.DataFrame(rows, schema=METRIC_SCHEMA), demos, by_country=True)


def aggregate_countries(
    predictions: pl.DataFrame, demos: pl.DataFrame | None = None, n_boot: int = 1000, seed: int = 0
) -> pl.DataFrame:
    """Countries pooled, each weighted by its number of test claims (country = "ALL").

    experiment "main": each method's headline setting (full demo pool, zero-shot) over countries.
    experiment "curve": each demo method per demo count, over main and curve rows, keeping only
    the demo counts evaluated in every country. A method missing in some country is dropped.
    """
    rng = np.random.default_rng(seed)
    outcomes = group_outcomes(predictions)
    rows = []
    for run_id, run in _parts(outcomes, ["run_id"]):
        n_countries = run["country"].n_unique()
        main = run.filter(pl.col("experiment") == "main")
        curve = run.filter(pl.col("n_demos") > 0, ~pl.col("method").str.starts_with("zero_shot"))
        for label, frame, keys in (
            ("main", main, ["method"]),
            ("curve", curve, ["method", "n_demos"]),
        ):
            for key, part in _parts(frame, keys):
                if part["country"].n_unique() < n_countries:
                    continue
                head = {
                    "run_id": run_id[0],
                    "country": ALL_COUNTRIES,
                    "experiment": label,
                    **dict(zip(keys, key, strict=True)),
                }
                if label == "main":
                    sizes = part["n_demos"].unique()
                    head["n_demos"] = sizes[0] if len(sizes) == 1 else None
                rows.append(_summary_row(head, part, n_boot, rng))
    return _with_label_accuracy(pl.DataFrame(rows, schema=METRIC_SCHEMA), demos, by_country=False)


def bootstrap_interval(
    correct: np.ndarray,
    weight: np.ndarray,
    strata: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """95% percentile interval of sum(w * correct) / sum(w * weight) under resampling.

    correct: (seeds, orders, units) successes per unit in each demo order ((seeds, units): one
    order); weight: (units,) trials per unit; strata: (units,) units are resampled within their
    stratum; orders are resampled within each seed, and the seeds too.
    """
    if correct.ndim == 2:
        correct = correct[:, None, :]
    n_seeds, n_orders, n_units = correct.shape
    unit_counts = np.zeros((n_boot, n_units))
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        unit_counts[:, members] = rng.multinomial(
            len(members), np.full(len(members), 1 / len(members)), size=n_boot
        )
    seed_share = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_boot) / n_seeds
    share = seed_share[:, :, None]  # (boot, seed, order): weight of each seed's order
    if n_orders > 1:
        order_share = rng.multinomial(n_orders, np.full(n_orders, 1 / n_orders), size=(n_boot, n_seeds))
        share = share * order_share / n_orders
    else:
        share = share * np.ones((1, 1, n_orders))
    per_order = np.einsum("sou,bu->bso", correct, unit_counts)
    replicate = (share * per_order).sum(axis=(1, 2)) / (unit_counts @ weight)
    low, high = np.percentile(replicate, [2.5, 97.5])
    return float(low), float(high)


def _parts(frame: pl.DataFrame, keys: list[str]):
    """(key tuple, sub-frame) in sorted key order, so bootstrap draws are reproducible."""
    return sorted(
        frame.group_by(keys, maintain_order=True),
        key=lambda kv: tuple((v is None, v) for v in kv[0]),
    )


def _summary_row(head: dict, outcomes: pl.DataFrame, n_boot: int, rng: np.random.Generator) -> dict:
    orders = outcomes.group_by(_ORDER).agg(
        claim_acc=pl.col("claims_correct").sum() / pl.col("n_claims").sum(),
        group_acc=pl.col("group_correct").mean(),
    )
    cells = (
        outcomes.with_columns(unit=pl.concat_str("country", pl.lit("\x1f"), "group_id"))
        .sort("icm_seed", "repeat", "unit", nulls_last=True)
    )
    seeds = cells["icm_seed"].unique(maintain_order=True).to_list()
    n_orders = cells.filter(pl.col("icm_seed").eq_missing(seeds[0]))["repeat"].n_unique()
    unit_ids = cells.filter(pl.col("icm_seed").eq_missing(seeds[0]) & (pl.col("repeat") == cells["repeat"][0]))
    n_units = unit_ids.height
    if cells.height != len(seeds) * n_orders * n_units or cells.select("icm_seed", "repeat", "unit").is_duplicated().any():
        raise ValueError(f"test questions or demo orders differ between ICM seeds or orders for {head}")
    if not (cells["unit"].to_numpy().reshape(-1, n_units) == unit_ids["unit"].to_numpy()).all():
        raise ValueError(f"test questions differ between ICM seeds or orders for {head}")
    shape = (len(seeds), n_orders, n_units)
    claims_correct = cells["claims_correct"].to_numpy().reshape(shape)
    groups_correct = cells["group_correct"].to_numpy().reshape(shape)
    n_claims = unit_ids["n_claims"].to_numpy()
    strata = unit_ids["country"].to_numpy()
    claim_ci = bootstrap_interval(claims_correct, n_claims, strata, n_boot, rng)
    group_ci = bootstrap_interval(groups_correct, np.ones(n_units), strata, n_boot, rng)
    return {
        "n_demos": None,
        **head,
        "n_countries": int(unit_ids["country"].n_unique()),
        "n_icm_seeds": sum(s != NO_ICM_SEED for s in seeds),
        "n_orders": orders.height,
        "n_test_claims": int(n_claims.sum()),
        "n_test_groups": n_units,
        "claim_acc": orders["claim_acc"].mean(),
        "claim_acc_std": orders["claim_acc"].std(),
        "claim_acc_ci_low": claim_ci[0],
        "claim_acc_ci_high": claim_ci[1],
        "group_acc": orders["group_acc"].mean(),
        "group_acc_std": orders["group_acc"].std(),
        "group_acc_ci_low": group_ci[0],
        "group_acc_ci_high": group_ci[1],
        "demo_label_acc": None,
    }


def _with_label_accuracy(
    metrics: pl.DataFrame, demos: pl.DataFrame | None, by_country: bool
) -> pl.DataFrame:
    if demos is None or demos.is_empty() or metrics.is_empty():
        return metrics
    keys = (
        ["run_id", "country", "method", "experiment", "n_demos"]
        if by_country
        else ["run_id", "method", "n_demos"]
    )
    label_acc = demos.group_by(keys).agg(demo_label_acc_=(pl.col("label") == pl.col("gold")).mean())
    if (
        not by_country
    ):  # an aggregate curve point covers both experiments; a main row may mix pool sizes
        main = (
            demos.filter(pl.col("experiment") == "main")
            .group_by("run_id", "method")
            .agg(main_acc_=(pl.col("label") == pl.col("gold")).mean())
        )
        joined = metrics.join(label_acc, on=keys, how="left", nulls_equal=True).join(
            main, on=["run_id", "method"], how="left"
        )
        acc = (
            pl.when(pl.col("experiment") == "main")
            .then(pl.col("main_acc_"))
            .otherwise(pl.col("demo_label_acc_"))
        )
        return joined.with_columns(demo_label_acc=acc).select(list(METRIC_SCHEMA))
    joined = metrics.join(label_acc, on=keys, how="left", nulls_equal=True)
    return joined.with_columns(demo_label_acc=pl.col("demo_label_acc_")).select(list(METRIC_SCHEMA))
