"""The persona-elicitation fork's data chain (`data.protocol: fork`), item for item.

The fork (github.com/ijamil1/Persona-Elicitation) builds its claims with
`data_transformation/transform_opinions.py` (dataset `all`), `transform_opinions_binary_questions.py`
(`binary`) and `csv_to_json.py`, and splits them with `load_data` in `src/experiments/ICM.py`:

1. GOQA rows in file order whose question, stripped and lower-cased, is one of its 180
   (persona_icm/fork_subset.py); a row without a question is dropped. `binary`: rows with exactly
   two options.
2. Selections restricted to its 14 countries; one record per (row, country, option).
3. A group is (question text, country): rows repeating a text share one group. Gold 1 for the
   largest share (exact equality); of tied records the first keeps 1, the others get 0.
4. Each group keeps its True record and one False record, drawn as pandas
   `groupby(["question", "country"]).sample(n=1, random_state=42)` draws: groups in sorted
   (question, country) order, over all 14 countries, one numpy RandomState, `choice(k, 1,
   replace=False)` for a group with k False records. Records stay in file order.
5. Per country, groups in order of first appearance, `random.Random(733244742).shuffle` of them;
   train takes whole groups until it holds at least min(int(0.75 n), 125) of the country's n claims
   and is cut to exactly that many (the cut group's other claim is in neither split); test takes
   the groups after it until min(50, int(0.25 n)), cut likewise.

Here 0.75, 125, 50, 42 and 733244742 are `train_fraction`, `train_cap`, `test_cap`, `seed` and
`split_seed` (their defaults under this protocol). GOQA is parsed safely (persona_icm.goqa), never
with eval as the fork did. Two things the fork's pandas round trip would do differently are left
out on purpose: question texts are compared after strip() (the fork keyed groups on the raw text), and
an option spelled like a pandas missing value ("None", "NA") stays text. Neither occurs in its 180
questions.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from persona_icm.countries import check_countries
from persona_icm.fork_subset import fork_question_key, fork_subset
from persona_icm.types import DataError

if TYPE_CHECKING:
    from persona_icm.config import DataConfig

_RECORD = ("question_id", "row_idx", "question", "country", "option_idx", "option", "share")


def fork_records(questions: pl.DataFrame, selections: pl.DataFrame, dataset: str) -> pl.DataFrame:
    """Steps 1-2: one row per (GOQA row, fork country, option), in the fork's order."""
    subset = fork_subset()
    keys = list(subset.keys)
    matched = pl.Series([fork_question_key(q) for q in questions["question"]]).is_in(keys)  # Python's strip/lower
    rows = questions.filter(matched)
    if dataset == "binary":
        rows = rows.filter(pl.col("n_options") == 2)
    return (
        selections.filter(pl.col("country").is_in(list(subset.countries)))
        .join(rows.select("question_id", "row_idx", "question", "options"), on="question_id")
        .with_columns(option=pl.col("options").list.get(pl.col("option_idx")))
        .sort("row_idx", "country", "option_idx")
        .select(_RECORD)
    )


def fork_claims(
    questions: pl.DataFrame, selections: pl.DataFrame, cfg: DataConfig, dataset_id: str = ""
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Steps 1-4: the claims of the requested countries (the `claims` table's columns), in the
    fork's record order, and a report of what was matched."""
    check_countries(cfg.countries, selections["country"].unique().sort().to_list())
    outside = [c for c in cfg.countries if c not in fork_subset().countries]
    if outside:
        raise DataError(
            f"protocol 'fork' has the fork's 14 countries ({', '.join(fork_subset().countries)}); "
            f"not {', '.join(repr(c) for c in outside)} (set data.protocol=balanced for other countries)"
        )
    records = fork_records(questions, selections, cfg.dataset)
    rows = records.rows()
    question, country, share = (records[c].to_list() for c in ("question", "country", "share"))
    groups: dict[tuple[str, str], list[int]] = {}
    for k, key in enumerate(zip(question, country, strict=True)):
        groups.setdefault(key, []).append(k)

    label = [0] * len(rows)
    tie: dict[tuple[str, str], bool] = {}
    for key, members in groups.items():
        if cfg.dataset == "binary" and len(members) > 2:
            raise DataError(
                f"protocol 'fork', dataset binary: question {key[0][:80]!r} has {len(members)} options in "
                f"{key[1]!r} (the text repeats in the GOQA file); the fork's binary chain stops here (its assert)"
            )
        top = max(share[k] for k in members)
        tops = [k for k in members if share[k] == top]
        label[tops[0]] = 1
        tie[key] = len(tops) > 1

    keep = [y == 1 for y in label]
    rng = np.random.RandomState(cfg.seed)
    for key in sorted(groups):
        false = [k for k in groups[key] if label[k] == 0]
        if false:
            keep[false[int(rng.choice(len(false), size=1, replace=False)[0])]] = True

    wanted = set(cfg.countries)
    out = []
    for k, (qid, _row, text, ctry, option_idx, option, value) in enumerate(rows):
        if keep[k] and ctry in wanted:
            first = rows[groups[(text, ctry)][0]][0]
            out.append((dataset_id, f"{qid}:{ctry}:{option_idx}", qid, ctry, option_idx, option, value,
                        label[k], f"{first}:{ctry}", tie[(text, ctry)]))
    claims = pl.DataFrame(
        out,
        schema={"dataset_id": pl.String, "claim_id": pl.String, "question_id": pl.String, "country": pl.String,
                "option_idx": pl.Int32, "option": pl.String, "share": pl.Float64, "label": pl.Int8,
                "group_id": pl.String, "tie": pl.Boolean},
        orient="row",
    )
    by_country = claims.group_by("country").agg(
        n=pl.col("group_id").n_unique(), ties=pl.col("group_id").filter(pl.col("tie")).n_unique()
    )
    report = {
        "protocol": "fork",
        "fork_questions_in_file": len({fork_question_key(q) for q in question}),
        "groups_by_country": {c: n for c, n, _ in by_country.sort("country").iter_rows()},
        "ties_by_country": {c: t for c, _, t in by_country.sort("country").iter_rows()},
    }
    return claims, report


def fork_splits(claims: pl.DataFrame, cfg: DataConfig) -> pl.DataFrame:
    """Step 5: each country's train and test claims; `position` is the fork's order in its split."""
    out = []
    for country in cfg.countries:
        mine = claims.filter(pl.col("country") == country)  # fork_claims keeps the record order
        if not mine.height:
            raise DataError(
                f"no question group for {country!r} passes the selection (protocol fork: the fork's "
                f"180 questions, dataset {cfg.dataset}); empty train and test splits"
            )
        groups: dict[str, list[str]] = {}
        for claim_id, group_id in mine.select("claim_id", "group_id").iter_rows():
            groups.setdefault(group_id, []).append(claim_id)
        order = list(groups)
        random.Random(cfg.split_seed).shuffle(order)
        n = mine.height
        train_target = min(int(n * cfg.train_fraction), cfg.train_cap)
        test_target = min(cfg.test_cap, int(n * (1 - cfg.train_fraction)))
        train: list[str] = []
        used = 0
        for group_id in order:
            if len(train) >= train_target:
                break
            train.extend(groups[group_id])
            used += 1
        test: list[str] = []
        for group_id in order[used:]:
            if len(test) >= test_target:
                break
            test.extend(groups[group_id])
        for split, ids in (("train", train[:train_target]), ("test", test[:test_target])):
            if not ids:
                raise DataError(
                    f"empty {split} split for {country!r}: it has {n} claims in {len(groups)} question group(s) "
                    f"(protocol fork; train_fraction {cfg.train_fraction}, train_cap {cfg.train_cap}, "
                    f"test_cap {cfg.test_cap} claims)"
                )
            out.extend((country, claim_id, split, position) for position, claim_id in enumerate(ids))
    return pl.DataFrame(
        out, schema={"country": pl.String, "claim_id": pl.String, "split": pl.String, "position": pl.Int32},
        orient="row",
    ).select(
        pl.lit(claims["dataset_id"][0] if claims.height else "", pl.String).alias("dataset_id"),
        pl.lit(cfg.split_seed, pl.Int32).alias("split_seed"),
        "country", "claim_id", "split", "position",
    )
