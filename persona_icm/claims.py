"""Binary claims ("option X is the most popular answer to Q in country C") and per-country splits.

Two protocols (`data.protocol`). "fork" (the default) is the persona-elicitation fork's chain,
item for item: persona_icm/fork_chain.py. "balanced" is this module's own rule, below.

A group is one (question, country). Its claims are the top option (gold label 1; ties go to the
lowest option index and are flagged) and one other option drawn with a seeded RNG (label 0), so
every group holds exactly one True and one False. Splits are at question level with one seeded
RNG shared by all countries: a question is in the same split in every country. Caps are in
claims and rounded down to whole groups.

Questions: those of `question_sources` (default GAS, i.e. Pew) or those named in a question list
file; with require_all_countries only questions with a usable group in every requested country. Groups are left
out when all shares are 0 (no top option) or fewer than two options remain (after dropping
non-substantive ones, if asked); the dataset's report counts them.

`build_dataset` is pure (polars frames in, frames out); `prepare_dataset` runs the whole chain
against the warehouse; `load_country_split` is what the search and the evaluation consume.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from persona_icm.countries import check_countries
from persona_icm.types import Claim as Claim
from persona_icm.types import DataError as DataError

if TYPE_CHECKING:  # keep `from persona_icm.claims import Claim` free of DuckDB and pydantic
    from persona_icm.config import DataConfig
    from persona_icm.goqa import GoqaTable
    from persona_icm.warehouse import Warehouse

# Bump when building claims or splits changes for the same inputs: it is part of dataset_id.
CLAIMS_VERSION = 2
TIE_TOLERANCE = 1e-9
# GOQA's "no opinion" answers: Pew's DK/Refused, WVS's Don't know / No answer / Missing; ...
NON_SUBSTANTIVE = re.compile(
    r"^\s*(dk\b|don'?t know|no answer|refused|(other )?missing\b|not asked\b)", re.IGNORECASE
)


@dataclass(frozen=True)
class CountrySplit:
    """The train and test claims of one country, in split order (groups adjacent)."""

    dataset_id: str
    country: str
    train: list[Claim]
    test: list[Claim]


class DataWarning(UserWarning):
    """Something was left out of the dataset (e.g. question-list entries not in GOQA)."""


@dataclass(frozen=True)
class Dataset:
    """Everything one data config produced: claims, splits and how they were made."""

    dataset_id: str
    params: dict[str, Any]
    claims: pl.DataFrame  # the `claims` table's columns
    splits: pl.DataFrame  # the `splits` table's columns
    questions: pl.DataFrame  # question_id, question (of the claims' questions)
    report: dict[str, Any] = field(default_factory=dict)
    countries: tuple[str, ...] = ()  # the countries it holds, in the config's order (countries 'all': by name)
    # countries 'all': the `dataset_countries` table's columns (every country of the file: chosen or why not)
    selection: pl.DataFrame | None = None

    def country_split(self, country: str) -> CountrySplit:
        return country_split_from_frames(self.dataset_id, self.claims, self.splits, self.questions, country)


# ------------------------------------------------------------------------------ inputs


def normalise_question(text: str) -> str:
    """Question text for matching: whitespace runs (including newlines) collapsed."""
    return " ".join(text.split())


def read_question_list(path: Path) -> list[str]:
    """Question texts from a CSV (column `question`, else the first column) or a plain text
    file (one per line; blank lines and lines starting with # ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"question list {path} does not exist")
    if path.suffix.lower() == ".csv":
        frame = pl.read_csv(path, infer_schema=False)
        column = "question" if "question" in frame.columns else frame.columns[0]
        entries = [t for t in frame[column].to_list() if t and t.strip()]
    else:
        lines = [line.strip() for line in path.read_text().splitlines()]
        entries = [line for line in lines if line and not line.startswith("#")]
    if not entries:
        raise DataError(f"question list {path} holds no questions")
    return entries


def dataset_fingerprint(params: dict[str, Any]) -> str:
    return "ds_" + hashlib.blake2b(json.dumps(params, sort_keys=True).encode(), digest_size=8).hexdigest()


def dataset_params(cfg: DataConfig, source_sha256: str, chosen: list[str] | None = None) -> dict[str, Any]:
    """Everything that shapes the claims and splits (file contents, never file paths); `chosen`: the
    countries that data.countries 'all' selected (see select_countries)."""
    if chosen is not None:
        rule = {"countries_rule": {"all": True, "min_groups": cfg.min_groups_for_all()}}
        return {**dataset_params(cfg.model_copy(update={"countries": chosen, "min_groups": None}), source_sha256), **rule}
    if cfg.protocol == "fork":
        from persona_icm.fork_subset import fork_subset

        return {
            "claims_version": CLAIMS_VERSION,
            "protocol": "fork",
            "source_sha256": source_sha256,
            "fork_subset_sha256": fork_subset().source_sha256,
            "dataset": cfg.dataset,
            "countries": sorted(cfg.countries),
            "seed": cfg.seed,
            "split_seed": cfg.split_seed,
            "train_fraction": cfg.train_fraction,
            "train_cap": cfg.train_cap,
            "test_cap": cfg.test_cap,
        }
    question_list = None
    if cfg.question_list is not None:
        question_list = hashlib.sha256(Path(cfg.question_list).read_bytes()).hexdigest()
    return {
        "claims_version": CLAIMS_VERSION,
        "protocol": "balanced",
        "source_sha256": source_sha256,
        "dataset": cfg.dataset,
        "countries": sorted(cfg.countries),
        "question_sources": None if question_list else sorted(cfg.question_sources),
        "require_all_countries": cfg.require_all_countries,
        "question_list_sha256": question_list,
        "drop_non_substantive": cfg.drop_non_substantive,
        "seed": cfg.seed,
        "split_seed": cfg.split_seed,
        "train_fraction": cfg.train_fraction,
        "train_cap": cfg.train_cap,
        "test_cap": cfg.test_cap,
    }


# ------------------------------------------------------------------------------ claims


def _options_long(questions: pl.DataFrame) -> pl.DataFrame:
    """One row per (question, option): question_id, option_idx, option, non_substantive."""
    return (
        questions.select("question_id", "options")
        .explode("options")
        .rename({"options": "option"})
        .with_columns(option_idx=pl.int_range(pl.len()).over("question_id").cast(pl.Int32))
        .with_columns(
            non_substantive=pl.col("option").map_elements(
                lambda o: bool(NON_SUBSTANTIVE.match(o.replace("\u2019", "'"))), return_dtype=pl.Boolean
            )
        )
    )


def _select_questions(questions: pl.DataFrame, cfg: DataConfig, report: dict[str, Any]) -> pl.DataFrame:
    if cfg.question_list is None:
        return questions.filter(pl.col("source").is_in(cfg.question_sources))
    entries = read_question_list(cfg.question_list)
    wanted = {normalise_question(e): e for e in entries}
    keyed = questions.with_columns(_key=pl.col("question").map_elements(normalise_question, return_dtype=pl.String))
    matched = keyed.filter(pl.col("_key").is_in(list(wanted)))
    unmatched = [entry for key, entry in wanted.items() if key not in set(matched["_key"])]
    report["question_list_entries"] = len(entries)
    report["question_list_unmatched"] = unmatched
    if unmatched:
        shown = "; ".join(repr(u[:80]) for u in unmatched[:5])
        warnings.warn(
            f"{len(unmatched)} of {len(entries)} entries of question list {cfg.question_list} are not "
            f"questions of this GOQA file (left out): {shown}{' ...' if len(unmatched) > 5 else ''}",
            DataWarning,
            stacklevel=3,
        )
    if not matched.height:
        raise DataError(f"no entry of question list {cfg.question_list} matches a GOQA question")
    return matched.drop("_key")


def build_claims(
    questions: pl.DataFrame, selections: pl.DataFrame, cfg: DataConfig, dataset_id: str = ""
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The claims of every (question, country) group the config selects, and a report of what
    was left out and why. One numpy Generator seeded with cfg.seed draws the False options, in
    (question_id, country) order."""
    check_countries(cfg.countries, selections["country"].unique().sort().to_list())
    report: dict[str, Any] = {}
    chosen = _select_questions(questions, cfg, report)

    options = _options_long(chosen)
    if cfg.drop_non_substantive:
        options = options.filter(~pl.col("non_substantive"))
    n_options = options.group_by("question_id").agg(n_kept=pl.len())
    if cfg.dataset == "binary":
        n_options = n_options.filter(pl.col("n_kept") == 2)
    cells = (
        selections.filter(pl.col("country").is_in(cfg.countries))
        .join(options.join(n_options, on="question_id").drop("non_substantive"), on=["question_id", "option_idx"])
        .sort("question_id", "country", "option_idx")
    )
    groups = (
        cells.group_by("question_id", "country", maintain_order=True)
        .agg(
            top_share=pl.col("share").max(),
            top_idx=pl.col("option_idx").filter(pl.col("share") >= pl.col("share").max() - TIE_TOLERANCE).min(),
            tie=(pl.col("share") >= pl.col("share").max() - TIE_TOLERANCE).sum() > 1,
            option_idx=pl.col("option_idx"),
        )
    )
    no_answers = groups.filter(pl.col("top_share") <= 0)
    report["groups_without_answers"] = no_answers.height  # all shares 0: no top option
    groups = groups.filter((pl.col("top_share") > 0) & (pl.col("option_idx").list.len() >= 2))

    if cfg.require_all_countries:
        n_countries = groups.group_by("question_id").agg(n=pl.col("country").n_unique())
        everywhere = n_countries.filter(pl.col("n") == len(set(cfg.countries)))["question_id"]
        report["questions_missing_a_country"] = n_countries.height - everywhere.len()
        groups = groups.filter(pl.col("question_id").is_in(everywhere.implode()))

    groups = groups.sort("question_id", "country")
    candidates = groups["option_idx"].to_list()
    tops = groups["top_idx"].to_list()
    others = [[k for k in c if k != t] for c, t in zip(candidates, tops, strict=True)]
    rng = np.random.default_rng(cfg.seed)
    draws = rng.integers(0, [len(o) for o in others]) if others else []
    groups = groups.with_columns(
        other_idx=pl.Series([o[d] for o, d in zip(others, draws, strict=True)], dtype=pl.Int32)
    )

    pairs = pl.concat(
        [
            groups.select("question_id", "country", "tie", option_idx="top_idx", label=pl.lit(1, pl.Int8)),
            groups.select("question_id", "country", "tie", option_idx="other_idx", label=pl.lit(0, pl.Int8)),
        ]
    )
    claims = (
        pairs.join(cells.select("question_id", "country", "option_idx", "option", "share"),
                   on=["question_id", "country", "option_idx"])
        .with_columns(group_id=pl.col("question_id") + ":" + pl.col("country"))
        .with_columns(
            dataset_id=pl.lit(dataset_id),
            claim_id=pl.col("group_id") + ":" + pl.col("option_idx").cast(pl.String),
        )
        .select("dataset_id", "claim_id", "question_id", "country", "option_idx", "option", "share",
                "label", "group_id", "tie")
        .sort("question_id", "country", "option_idx")
    )
    report["groups_by_country"] = {c: n for c, n in groups.group_by("country").len().sort("country").iter_rows()}
    report["ties_by_country"] = {
        c: n for c, n in groups.group_by("country").agg(pl.col("tie").sum()).sort("country").iter_rows()
    }
    return claims, report


# ------------------------------------------------------------------------------ splits


def split_claims(claims: pl.DataFrame, questions: pl.DataFrame, cfg: DataConfig) -> pl.DataFrame:
    """Question-level train/test split shared by all countries, capped per country in whole groups.

    The distinct question texts (rows repeating a text stay together) are shuffled by one numpy
    Generator seeded with cfg.split_seed. Walking that order, each question goes to the side that
    keeps every country it is asked in closest to `train_fraction` train-side groups (least
    squares over those countries; ties to train). With one question set for all countries every
    country's train side is within half a group of train_fraction; with uneven question sets no
    country ends up lopsided by chance (as a plain cut of the shuffled order can). Each country then takes, in shuffled order, its first
    train_cap // 2 train-side and test_cap // 2 test-side groups. `position` is the order
    within (country, split).
    """
    texts = (
        questions.filter(pl.col("question_id").is_in(claims["question_id"].unique().implode()))
        .select("question_id", text=pl.col("question").map_elements(normalise_question, return_dtype=pl.String))
    )
    distinct = texts["text"].unique().sort()
    order = np.random.default_rng(cfg.split_seed).permutation(distinct.len())
    ranks = pl.DataFrame({"text": distinct[order], "rank": np.arange(distinct.len())})
    cells = (
        claims.select("question_id", "country", "group_id").unique()
        .join(texts, on="question_id")
        .group_by("text", "country").agg(n=pl.len())
        .join(ranks, on="text").sort("rank", "country")
    )
    f = cfg.train_fraction
    seen: dict[str, int] = {}
    train: dict[str, int] = {}
    sides = []
    for rank_rows in cells.partition_by("rank", maintain_order=True):
        per_country = list(zip(rank_rows["country"], rank_rows["n"], strict=True))
        error_if_train = sum((train.get(c, 0) + n - f * (seen.get(c, 0) + n)) ** 2 for c, n in per_country)
        error_if_test = sum((train.get(c, 0) - f * (seen.get(c, 0) + n)) ** 2 for c, n in per_country)
        to_train = error_if_train <= error_if_test
        for c, n in per_country:
            seen[c] = seen.get(c, 0) + n
            train[c] = train.get(c, 0) + (n if to_train else 0)
        sides.append((rank_rows["text"][0], "train" if to_train else "test"))
    side = texts.join(ranks, on="text").join(
        pl.DataFrame(sides, schema={"text": pl.String, "side": pl.String}, orient="row"), on="text"
    ).select("question_id", "rank", "side")
    groups = (
        claims.select("question_id", "country", "group_id").unique()
        .join(side, on="question_id")
        .sort("country", "side", "rank", "question_id")
        .with_columns(k=pl.int_range(pl.len()).over("country", "side"))
    )
    caps = {"train": cfg.train_cap // 2, "test": cfg.test_cap // 2}
    for country in cfg.countries:
        mine = groups.filter(pl.col("country") == country)
        if not mine.height:
            raise DataError(
                f"no question group for {country!r} passes the selection ({_selection_text(cfg)}); "
                "empty train and test splits"
            )
        for split in ("train", "test"):
            if not mine.filter(pl.col("side") == split).height:
                raise DataError(
                    f"empty {split} split for {country!r}: it has {mine.height} question group(s) "
                    f"({mine.filter(pl.col('side') == 'train').height} train-side, "
                    f"{mine.filter(pl.col('side') == 'test').height} test-side; train_fraction "
                    f"{cfg.train_fraction}, train_cap {cfg.train_cap}, test_cap {cfg.test_cap} claims)"
                )
    kept = groups.filter(pl.col("k") < pl.col("side").replace_strict(caps, return_dtype=pl.Int64))
    return (
        claims.select("dataset_id", "claim_id", "group_id", "option_idx")
        .join(kept.select("group_id", "country", "side", "rank", "question_id"), on="group_id")
        .sort("country", "side", "rank", "question_id", "option_idx")
        .with_columns(position=pl.int_range(pl.len()).over("country", "side").cast(pl.Int32))
        .select("dataset_id", pl.lit(cfg.split_seed, pl.Int32).alias("split_seed"), "country", "claim_id",
                pl.col("side").alias("split"), "position")
    )


def _selection_text(cfg: DataConfig) -> str:
    chosen = f"question list {cfg.question_list}" if cfg.question_list else f"sources {', '.join(cfg.question_sources)}"
    every = f", asked in all of {', '.join(cfg.countries)}" if cfg.require_all_countries else ""
    drop = ", non-substantive options dropped" if cfg.drop_non_substantive else ""
    return f"{chosen}{every}, dataset {cfg.dataset}{drop}"


# ------------------------------------------------------------------------------ countries 'all'

SELECTION_SCHEMA = {"country": pl.String, "n_groups": pl.Int32, "selected": pl.Boolean, "reason": pl.String}


def select_countries(questions: pl.DataFrame, selections: pl.DataFrame, cfg: DataConfig) -> pl.DataFrame:
    """data.countries 'all': every country of the file with its usable question groups under `cfg`'s
    selection (source, dataset, question list, protocol), whether it qualifies (at least
    cfg.min_groups_for_all() groups; protocol fork: one of the fork's 14 countries too), and why not.
    Columns SELECTION_SCHEMA, one row per country of the file, by name."""
    known = selections["country"].unique().sort().to_list()
    if cfg.protocol == "fork":
        from persona_icm.fork_chain import fork_claims
        from persona_icm.fork_subset import fork_subset

        eligible = [c for c in known if c in fork_subset().countries]
        counts = fork_claims(questions, selections, cfg.model_copy(update={"countries": eligible}))[1] if eligible else {}
    else:
        eligible = known
        counts = build_claims(questions, selections, cfg.model_copy(update={"countries": known}))[1]
    groups = (counts or {}).get("groups_by_country", {})
    need = cfg.min_groups_for_all()
    rows = []
    for country in known:
        n = groups.get(country, 0)
        if country not in eligible:
            reason = "not one of the fork's 14 countries (protocol fork; data.protocol=balanced takes every country)"
        elif n < need:
            reason = f"{n} usable question group(s), fewer than min_groups {need}"
        else:
            reason = None
        rows.append((country, n, reason is None, reason))
    frame = pl.DataFrame(rows, schema=SELECTION_SCHEMA, orient="row")
    if not frame["selected"].any():
        most = frame.sort("n_groups", descending=True).row(0, named=True) if frame.height else None
        best = f"; the most any has is {most['n_groups']} ({most['country']})" if most else ""
        raise DataError(
            f"data.countries 'all': no country of this GOQA file has {need} usable question groups "
            f"({_selection_text(cfg)}){best}; lower data.min_groups"
        )
    return frame


def left_out_line(selection: pl.DataFrame, shown: int = 12) -> str:
    """One line for the log: how many countries qualified, and the countries left out with their reasons
    (the first `shown`; all of them are in the warehouse's view countries_left_out)."""
    out = selection.filter(~pl.col("selected")).sort("n_groups", "country", descending=[True, False])
    parts = [f"{c} ({r})" for c, r in out.head(shown).select("country", "reason").iter_rows()]
    more = f"; and {out.height - shown} more" if out.height > shown else ""
    return (f"data.countries 'all': {selection['selected'].sum()} of {selection.height} countries qualify, "
            f"{out.height} left out{': ' + '; '.join(parts) + more if parts else ''}")


# ------------------------------------------------------------------------------ the whole chain


def build_dataset(
    questions: pl.DataFrame, selections: pl.DataFrame, cfg: DataConfig, source_sha256: str
) -> Dataset:
    """Claims and splits for `cfg` from one parsed GOQA file (goqa.read_goqa / goqa.load_goqa).
    data.countries 'all' becomes the countries that qualify (select_countries), in name order."""
    selection = None
    if cfg.countries == "all":
        selection = select_countries(questions, selections, cfg)
        chosen = selection.filter(pl.col("selected"))["country"].to_list()
        params = dataset_params(cfg, source_sha256, chosen)
        cfg = cfg.model_copy(update={"countries": chosen})
    else:
        params = dataset_params(cfg, source_sha256)
    dataset_id = dataset_fingerprint(params)
    if cfg.protocol == "fork":
        from persona_icm.fork_chain import fork_claims, fork_splits

        claims, report = fork_claims(questions, selections, cfg, dataset_id)
        splits = fork_splits(claims, cfg)
    else:
        claims, report = build_claims(questions, selections, cfg, dataset_id)
        splits = split_claims(claims, questions, cfg)
    sizes = splits.group_by("country", "split").len().sort("country", "split")
    report["split_claims"] = {f"{c}/{s}": n for c, s, n in sizes.iter_rows()}
    if selection is not None:
        report["countries_left_out"] = {c: r for c, r in selection.filter(~pl.col("selected")).select("country", "reason").iter_rows()}
        selection = selection.select(pl.lit(dataset_id).alias("dataset_id"), pl.all())
    used = questions.filter(pl.col("question_id").is_in(claims["question_id"].unique().implode()))
    return Dataset(dataset_id, params, claims, splits, used.select("question_id", "question"), report,
                   tuple(cfg.countries), selection)


def write_dataset(wh: Warehouse, dataset: Dataset) -> None:
    """Replace the dataset's rows in datasets/claims/splits, in one transaction."""
    row = pl.DataFrame(
        [{
            "dataset_id": dataset.dataset_id,
            "source_sha256": dataset.params["source_sha256"],
            "dataset": dataset.params["dataset"],
            "countries": dataset.params["countries"],
            "split_seed": dataset.params["split_seed"],
            "params": json.dumps(dataset.params, sort_keys=True),
            "n_claims": dataset.claims.height,
            "report": json.dumps(dataset.report, sort_keys=True),
        }]
    )
    with wh.transaction():
        wh.replace("claims", dataset.claims, dataset_id=dataset.dataset_id)
        wh.replace("splits", dataset.splits, dataset_id=dataset.dataset_id)
        wh.replace("datasets", row, dataset_id=dataset.dataset_id)
        if dataset.selection is not None:
            wh.replace("dataset_countries", dataset.selection, dataset_id=dataset.dataset_id)


def dataset_from_file(cfg: DataConfig, data_dir: Path | None = None) -> tuple[GoqaTable, Dataset]:
    """GOQA file -> (the parsed file, its claims and splits for `cfg`), in memory (nothing is
    written): what preflight checks and the flow then writes, and what the benchmarks and
    measurement scripts run on. `dataset.country_split(c)` gives one country's claims."""
    from persona_icm import goqa

    table = goqa.read_goqa(goqa.claims_source_path(cfg, data_dir or goqa.DATA_DIR))
    return table, build_dataset(table.questions, table.selections, cfg, table.source_sha256)


def prepare_dataset(wh: Warehouse, cfg: DataConfig, data_dir: Path | None = None) -> Dataset:
    """GOQA file -> warehouse -> claims and splits for `cfg`, written to the warehouse."""
    from persona_icm import goqa

    path = goqa.claims_source_path(cfg, data_dir or goqa.DATA_DIR)
    ingested = goqa.ingest_goqa(wh, path)
    questions, selections = goqa.load_goqa(wh, ingested.source_sha256)
    dataset = build_dataset(questions, selections, cfg, ingested.source_sha256)
    write_dataset(wh, dataset)
    return dataset


# ------------------------------------------------------------------------------ reading back


def country_split_from_frames(
    dataset_id: str, claims: pl.DataFrame, splits: pl.DataFrame, questions: pl.DataFrame, country: str
) -> CountrySplit:
    rows = (
        splits.filter((pl.col("dataset_id") == dataset_id) & (pl.col("country") == country))
        .join(claims.filter(pl.col("dataset_id") == dataset_id).drop("country"), on=["dataset_id", "claim_id"])
        .join(questions.select("question_id", "question"), on="question_id")
        .sort("split", "position")
    )
    if not rows.height:
        raise LookupError(f"dataset {dataset_id} has no split claims for country {country!r}")
    out: dict[str, list[Claim]] = {"train": [], "test": []}
    for r in rows.iter_rows(named=True):
        out[r["split"]].append(Claim(r["claim_id"], r["group_id"], country, r["question"], r["option"], int(r["label"])))
    return CountrySplit(dataset_id, country, out["train"], out["test"])


def load_country_split(wh: Warehouse, dataset_id: str, country: str) -> CountrySplit:
    """The train and test claims of `country` in dataset `dataset_id`, from the warehouse."""
    source = wh.scalar("SELECT source_sha256 FROM datasets WHERE dataset_id = ?", [dataset_id])
    if source is None:
        raise LookupError(f"no dataset {dataset_id} in {wh.path}")
    splits = wh.sql("SELECT * FROM splits WHERE dataset_id = ? AND country = ?", [dataset_id, country])
    claims = wh.sql("SELECT * FROM claims WHERE dataset_id = ? AND country = ?", [dataset_id, country])
    questions = wh.sql(
        "SELECT question_id, question FROM goqa_questions WHERE source_sha256 = ?"
        " AND question_id IN (SELECT question_id FROM claims WHERE dataset_id = ? AND country = ?)",
        [source, dataset_id, country],
    )
    return country_split_from_frames(dataset_id, claims, splits, questions, country)


def export_dataset(wh: Warehouse, dataset_id: str, out_dir: Path) -> list[Path]:
    """Write the dataset's claims and splits as sorted CSVs (byte-identical for identical data)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for table, order in (("claims", "claim_id"), ("splits", "country, split, position")):
        path = out_dir / f"{table}.csv"
        wh.sql(f"SELECT * FROM {table} WHERE dataset_id = ? ORDER BY {order}", [dataset_id]).write_csv(path)
        paths.append(path)
    return paths
