"""95% bootstrap intervals of the accuracies that the warehouse views define.

The point estimates (claim and group accuracy, their mean and std over demo orders, the
test-size-weighted pooling of countries) are SQL in warehouse/schema.sql and nowhere else. This
module reads the view `question_outcomes` (per prompt set and test question: claims right,
claims, group credit with the tie rule) and resamples it:

- 95% percentile bootstrap: resample test questions with replacement (within each country when
  countries are pooled), the demo orders (within each ICM seed) and, with several ICM seeds, the
  seeds; orders and questions are crossed (every order scores every question), so each is
  resampled on its own. It covers the order-to-order spread of the reported mean as well as
  test-set sampling (docs/method.md "Evaluation protocol").

Metrics frame columns (table `metrics`): run_id, country ("ALL" for the pooled countries),
method, experiment, n_demos (null in a pooled row whose countries differ in pool size),
n_icm_seeds, claim_acc_ci_low, claim_acc_ci_high, group_acc_ci_low, group_acc_ci_high.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from persona_icm.methods import zero_shot_names
from persona_icm.types import NO_ICM_SEED
from persona_icm.warehouse import Warehouse, open_warehouse, question_outcomes, write_results

ALL_COUNTRIES = "ALL"
METRIC_SCHEMA = {
    "run_id": pl.String,
    "country": pl.String,
    "method": pl.String,
    "experiment": pl.String,
    "n_demos": pl.Int64,
    "n_icm_seeds": pl.Int64,
    "claim_acc_ci_low": pl.Float64,
    "claim_acc_ci_high": pl.Float64,
    "group_acc_ci_low": pl.Float64,
    "group_acc_ci_high": pl.Float64,
}


def summarize(outcomes: pl.DataFrame, n_boot: int = 1000, seed: int = 0) -> pl.DataFrame:
    """Per results_by_country cell (country, method, experiment; demo count for "curve"): the 95%
    bootstrap interval of both accuracies. `outcomes`: rows of the view question_outcomes."""
    rng = np.random.default_rng(seed)
    keys = ["run_id", "country", "method", "experiment", "cell"]
    cells = outcomes.with_columns(cell=pl.when(pl.col("experiment") == "main").then(None).otherwise(pl.col("n_demos")))
    rows = []
    for key, part in _parts(cells, keys):
        head = dict(zip(keys[:-1], key[:-1], strict=True))
        sizes = part["n_demos"].unique()
        head["n_demos"] = sizes[0] if len(sizes) == 1 else None  # main: seeds' pools may differ in size
        rows.append(_interval_row(head, part, n_boot, rng))
    return pl.DataFrame(rows, schema=METRIC_SCHEMA)


def aggregate_countries(outcomes: pl.DataFrame, n_boot: int = 1000, seed: int = 0) -> pl.DataFrame:
    """The intervals of the pooled countries (country "ALL"), for the cells of results_aggregated.

    experiment "main": each method's headline setting (full demo pool, zero-shot) over countries.
    experiment "curve": each demo method per demo count, over main and curve rows, keeping only
    the demo counts evaluated in every country. A method missing in some country is dropped.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for run_id, run in _parts(outcomes, ["run_id"]):
        n_countries = run["country"].n_unique()
        main = run.filter(pl.col("experiment") == "main")
        curve = run.filter(pl.col("n_demos") > 0, ~pl.col("method").is_in(zero_shot_names()))
        for label, frame, keys in (("main", main, ["method"]), ("curve", curve, ["method", "n_demos"])):
            for key, part in _parts(frame, keys):
                if part["country"].n_unique() < n_countries:
                    continue
                head = {"run_id": run_id[0], "country": ALL_COUNTRIES, "experiment": label, **dict(zip(keys, key, strict=True))}
                if label == "main":
                    sizes = part["n_demos"].unique()
                    head["n_demos"] = sizes[0] if len(sizes) == 1 else None
                rows.append(_interval_row(head, part, n_boot, rng))
    return pl.DataFrame(rows, schema=METRIC_SCHEMA)


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


def _interval_row(head: dict, outcomes: pl.DataFrame, n_boot: int, rng: np.random.Generator) -> dict:
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
        "n_icm_seeds": sum(s != NO_ICM_SEED for s in seeds),
        "claim_acc_ci_low": claim_ci[0],
        "claim_acc_ci_high": claim_ci[1],
        "group_acc_ci_low": group_ci[0],
        "group_acc_ci_high": group_ci[1],
    }


# ---------------------------------------------------------------- rows written with their intervals

def write_evaluation(
    wh: Warehouse, run_id: str, country: str, frames: dict[str, pl.DataFrame], n_boot: int = 1000, seed: int = 0,
    step: str = "eval", methods: Sequence[str] | None = None, intervals: bool = True,
) -> dict[str, int]:
    """One country's evaluation (predictions, demos, model_calls of `step`; with `methods`, the rows of those
    methods only) and, with `intervals`, the bootstrap intervals of all of the country's accuracies
    (metrics, from the views), in one transaction."""
    with wh.transaction():
        written = write_results(wh, run_id, country, step, frames, methods)
        if intervals:
            written |= write_intervals(wh, run_id, country, n_boot, seed)
    return written


def write_intervals(wh: Warehouse, run_id: str, country: str, n_boot: int = 1000, seed: int = 0) -> dict[str, int]:
    """The bootstrap intervals of every accuracy of the country's rows in the warehouse (metrics)."""
    intervals = summarize(question_outcomes(wh, run_id, country), n_boot=n_boot, seed=seed)
    return write_results(wh, run_id, country, "eval", {"metrics": intervals})


def write_aggregate(wh: Warehouse, run_id: str, n_boot: int = 1000, seed: int = 0) -> int:
    """The intervals of the pooled countries (metrics rows of country 'ALL'); returns rows written."""
    pooled = aggregate_countries(question_outcomes(wh, run_id), n_boot=n_boot, seed=seed)
    return write_results(wh, run_id, ALL_COUNTRIES, "aggregate", {"metrics": pooled})["metrics"]


def evaluation_warehouse(predictions: pl.DataFrame, demos: pl.DataFrame | None = None, n_boot: int = 1000, seed: int = 0) -> Warehouse:
    """An in-memory warehouse holding prediction (and demo) frames of any runs and countries with
    their intervals: the views (results_by_country, results_aggregated, ...) then give every
    number a run would. For scripts and tests that evaluate without a flow."""
    wh = open_warehouse(":memory:")
    for (run_id, country), part in predictions.group_by("run_id", "country", maintain_order=True):
        frames = {"predictions": part.drop("run_id", "country")}
        if demos is not None:
            frames["demos"] = demos.filter((pl.col("run_id") == run_id) & (pl.col("country") == country)).drop("run_id", "country")
        write_evaluation(wh, run_id, country, frames, n_boot, seed)
    for (run_id,) in predictions.select("run_id").unique(maintain_order=True).iter_rows():
        write_aggregate(wh, run_id, n_boot, seed)
    return wh
