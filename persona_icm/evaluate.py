"""Many-shot evaluation of labelled demo sets on held-out claims (docs/method.md "Evaluation protocol").

For one country: ICM labels, golden labels and accuracy-matched random labels of the same demo
claims are each shown to the base model in `eval_repeats` seeded random orders, and every test
claim is scored after the identical demo context: one backend call per (method, demo set, order).
Zero-shot base and zero-shot chat are scored once (deterministic). `option_prior_*` is the
model-free confound check: a test claim scores (demos with its exact option text labelled True)
- (labelled False). The accuracy-vs-demos curve samples whole groups of the demo pool for each
size and each repeat; golden, ICM and random-matched labels use the same sampled claims and order.

Outputs (polars), the source of truth for every metric (see persona_icm/metrics.py):
- predictions(run_id, country, method, experiment, n_demos, repeat, icm_seed, claim_id, group_id,
  score, pred, gold): one row per test claim per evaluated prompt set.
  method: icm | golden | random_matched | zero_shot_base | zero_shot_chat | option_prior_golden |
  option_prior_icm. experiment: "main" (the headline comparison: full demo pool, zero-shot)
  or "curve" (sub-sampled demo sets). n_demos: target demo count (the pool size for "main",
  0 for zero-shot); whole groups are sampled, so a curve prompt holds at most n_demos demos.
  repeat: order index (0 for zero-shot and option prior, which do not depend on order).
  icm_seed: the ICM run whose demo pool was used; NO_ICM_SEED (-1) for rows that depend on no
  ICM run (zero-shot; golden when no ICM labels were given), so the column can be part of a
  primary key. pred = score > 0.
- demos(run_id, country, method, experiment, n_demos, repeat, icm_seed, position, claim_id,
  label, gold): the exact demonstrations of every prompt, in prompt order.

Randomness: one numpy Generator, drawn in a fixed order (ICM seed, size, repeat: groups, order,
random-matched flips) that does not depend on which methods are enabled, so dropping a method
never changes another method's demos.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from persona_icm.claims import Claim
from persona_icm.config import EvalConfig
from persona_icm.scoring.base import ClaimScorer, ScoreRequest, record_calls

log = logging.getLogger(__name__)

NO_ICM_SEED = -1
PREDICTION_SCHEMA = {
    "run_id": pl.String,
    "country": pl.String,
    "method": pl.String,
    "experiment": pl.String,
    "n_demos": pl.Int64,
    "repeat": pl.Int64,
    "icm_seed": pl.Int64,
    "claim_id": pl.String,
    "group_id": pl.String,
    "score": pl.Float64,
    "pred": pl.Int8,
    "gold": pl.Int8,
}
DEMO_SCHEMA = {
    "run_id": pl.String,
    "country": pl.String,
    "method": pl.String,
    "experiment": pl.String,
    "n_demos": pl.Int64,
    "repeat": pl.Int64,
    "icm_seed": pl.Int64,
    "position": pl.Int64,
    "claim_id": pl.String,
    "label": pl.Int8,
    "gold": pl.Int8,
}

Labels = Mapping[str, int]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class EvalResult:
    predictions: pl.DataFrame
    demos: pl.DataFrame
    skipped: dict[str, str] = field(default_factory=dict)
    """Methods requested but not run, with the reason (e.g. no chat model configured)."""


@dataclass(frozen=True)
class _PromptSet:
    """Test claims scored after one fixed demo context (or zero-shot): one backend call."""

    method: str
    experiment: str
    n_demos: int
    repeat: int
    icm_seed: int
    context: tuple[tuple[Claim, int], ...]
    kind: str = "base"


def labels_from_frame(
    icm_labels: pl.DataFrame, country: str | None = None
) -> dict[int, dict[str, int]]:
    """{icm_seed: {claim_id: label}} from a frame icm_labels(claim_id, label[, icm_seed, country]).

    Rows with a null label (claims the search never labelled) are not demos and are dropped.
    Without an `icm_seed` column the labels are one run, seed 0. `country` keeps that country's rows.
    """
    missing = {"claim_id", "label"} | ({"country"} if country is not None else set())
    missing -= set(icm_labels.columns)
    if missing:
        raise ValueError(
            f"icm_labels frame lacks column(s) {sorted(missing)}; has {icm_labels.columns}"
        )
    frame = icm_labels.filter(pl.col("label").is_not_null())
    if country is not None:
        frame = frame.filter(pl.col("country") == country)
    if "icm_seed" not in frame.columns:
        frame = frame.with_columns(icm_seed=pl.lit(0))
    repeated = frame.filter(pl.struct("icm_seed", "claim_id").is_duplicated())
    if not repeated.is_empty():
        raise ValueError(
            f"icm_labels frame labels claim(s) more than once per icm_seed: {repeated.head(3).rows()}"
        )
    out: dict[int, dict[str, int]] = {}
    for seed, claim_id, label in frame.select("icm_seed", "claim_id", "label").iter_rows():
        out.setdefault(int(seed), {})[claim_id] = int(label)
    return out


def curve_sizes(pool_size: int, requested: Sequence[int]) -> list[int]:
    """Requested demo counts strictly below the pool, ascending, then the pool size itself."""
    return sorted({n for n in requested if 0 < n < pool_size}) + (
        [pool_size] if pool_size > 0 else []
    )


def sample_whole_groups(pool: Sequence[Claim], n: int, rng: np.random.Generator) -> list[Claim]:
    """Whole groups of `pool` in a random order, each taken if it still fits in `n` claims.

    Returned in pool order (the caller shuffles). Groups are the pool's members of one group_id,
    so an ICM pool with a half-labelled group contributes that one claim as a group.
    """
    groups: dict[str, list[Claim]] = {}
    for claim in pool:
        groups.setdefault(claim.group_id, []).append(claim)
    members = list(groups.values())
    taken: set[str] = set()
    room = n
    for index in rng.permutation(len(members)):
        group = members[index]
        if len(group) <= room:
            taken.add(group[0].group_id)
            room -= len(group)
        if room == 0:
            break
    return [c for c in pool if c.group_id in taken]


def accuracy_matched_labels(
    claims: Sequence[Claim], icm: Labels, rng: np.random.Generator
) -> list[int]:
    """Gold labels of `claims` with a random subset flipped, as many as ICM gets wrong on them."""
    n_wrong = sum(icm[c.claim_id] != c.gold for c in claims)
    flip = set(rng.choice(len(claims), size=n_wrong, replace=False).tolist())
    return [1 - c.gold if i in flip else c.gold for i, c in enumerate(claims)]


def option_prior_scores(context: Sequence[tuple[Claim, int]], test: Sequence[Claim]) -> list[float]:
    """Per test claim: demos with the same option text labelled True minus those labelled False."""
    votes: dict[str, int] = {}
    for claim, label in context:
        votes[claim.option] = votes.get(claim.option, 0) + (1 if label == 1 else -1)
    return [float(votes.get(c.option, 0)) for c in test]


def _check_inputs(
    train: Sequence[Claim], test: Sequence[Claim], icm_runs: Mapping[int, Labels]
) -> None:
    if not test:
        raise ValueError("test claims are empty: nothing to evaluate")
    countries = {c.country for c in (*train, *test)}
    if len(countries) > 1:
        raise ValueError(f"evaluate_country got claims from several countries: {sorted(countries)}")
    train_ids = {c.claim_id for c in train}
    leaked = train_ids & {c.claim_id for c in test}
    if leaked:
        raise ValueError(
            f"{len(leaked)} claim(s) are both demo and test claims, e.g. {sorted(leaked)[:3]}"
        )
    for seed, labels in icm_runs.items():
        unknown = set(labels) - train_ids
        if unknown:
            raise ValueError(
                f"ICM labels (seed {seed}) name claim(s) not in the demo claims: {sorted(unknown)[:3]}"
            )
        bad = {k: v for k, v in labels.items() if v not in (0, 1)}
        if bad:
            raise ValueError(
                f"ICM labels (seed {seed}) must be 0 or 1; got {dict(list(bad.items())[:3])}"
            )


def plan_prompt_sets(
    train: Sequence[Claim],
    icm_runs: Mapping[int, Labels],
    config: EvalConfig,
    rng: np.random.Generator,
) -> list[_PromptSet]:
    """Every demo context to evaluate, in the order the Generator is drawn (see module doc)."""
    sets: list[_PromptSet] = []
    pools: list[tuple[int, list[Claim]]] = (
        [
            (seed, [c for c in train if c.claim_id in labels])
            for seed, labels in sorted(icm_runs.items())
        ]
        if icm_runs
        else [(NO_ICM_SEED, list(train))]
    )
    for seed, pool in pools:
        icm = icm_runs.get(seed, {})
        sizes = curve_sizes(len(pool), config.demo_sizes) if config.demo_sizes else [len(pool)]
        for n in sizes:
            experiment = "main" if n == len(pool) else "curve"
            for repeat in range(config.eval_repeats):
                chosen = pool if experiment == "main" else sample_whole_groups(pool, n, rng)
                ordered = [chosen[i] for i in rng.permutation(len(chosen))]
                matched = accuracy_matched_labels(ordered, icm, rng) if icm else None
                labelled = {"golden": [c.gold for c in ordered]}
                if icm:
                    labelled["icm"] = [icm[c.claim_id] for c in ordered]
                    labelled["random_matched"] = matched
                for method, labels in labelled.items():
                    sets.append(
                        _PromptSet(
                            method,
                            experiment,
                            n,
                            repeat,
                            seed,
                            tuple(zip(ordered, labels, strict=True)),
                        )
                    )
    return sets


def evaluate_country(
    scorer: ClaimScorer,
    train: Sequence[Claim],
    test: Sequence[Claim],
    config: EvalConfig,
    *,
    icm_labels: Mapping[int, Labels] | Labels | None = None,
    chat_scorer: ClaimScorer | None = None,
    rng: np.random.Generator | None = None,
    run_id: str = "",
    batched: bool = True,
    progress: Progress | None = None,
) -> EvalResult:
    """Predictions of every configured method on `test` for one country.

    train: the demo candidates (the ICM search's training claims). icm_labels: one ICM run as
    {claim_id: label}, or several as {icm_seed: {claim_id: label}}; only labelled claims are
    demos, and golden/random-matched use the same claims. Without ICM labels, golden uses all
    of `train` and the ICM-based methods are skipped. rng defaults to default_rng(config.seed).
    batched=False scores one prompt per backend call: the reference path for the batching test.
    """
    icm_runs = _as_runs(icm_labels)
    _check_inputs(train, test, icm_runs)
    rng = rng if rng is not None else np.random.default_rng(config.seed)
    country = test[0].country
    methods = set(config.methods)
    skipped: dict[str, str] = {}
    if not icm_runs:
        for method in ("icm", "random_matched"):
            if method in methods:
                skipped[method] = "no ICM labels given"
    if "zero_shot_chat" in methods and chat_scorer is None:
        skipped["zero_shot_chat"] = "no chat model configured"
    for method, reason in skipped.items():
        log.warning("evaluation of %s skipped for %s: %s", method, country, reason)

    planned = plan_prompt_sets(train, icm_runs, config, rng)
    prompt_sets = [p for p in planned if p.method in methods]
    if "zero_shot_base" in methods:
        prompt_sets.append(_PromptSet("zero_shot_base", "main", 0, 0, NO_ICM_SEED, ()))
    if "zero_shot_chat" in methods and chat_scorer is not None:
        prompt_sets.append(_PromptSet("zero_shot_chat", "main", 0, 0, NO_ICM_SEED, (), kind="chat"))

    scored = _score_prompt_sets(scorer, chat_scorer, prompt_sets, test, batched, progress)

    if "option_prior" in methods:
        for p in planned:
            # Order does not change a vote count: one row per demo set (main: repeat 0 only).
            if p.method in ("golden", "icm") and (p.experiment == "curve" or p.repeat == 0):
                prior = _PromptSet(
                    f"option_prior_{p.method}",
                    p.experiment,
                    p.n_demos,
                    p.repeat,
                    p.icm_seed,
                    p.context,
                )
                scored.append((prior, option_prior_scores(p.context, test)))

    return EvalResult(
        _predictions_frame(run_id, country, scored, test),
        _demos_frame(run_id, country, scored),
        skipped,
    )


def _as_runs(icm_labels: Mapping[int, Labels] | Labels | None) -> dict[int, dict[str, int]]:
    if not icm_labels:
        return {}
    first = next(iter(icm_labels.values()))
    if isinstance(first, Mapping):
        runs = {int(seed): dict(labels) for seed, labels in icm_labels.items()}
    else:
        runs = {0: dict(icm_labels)}
    if NO_ICM_SEED in runs:
        raise ValueError(f"icm_seed {NO_ICM_SEED} is reserved for rows that use no ICM run")
    return runs


def _score_prompt_sets(
    scorer: ClaimScorer,
    chat_scorer: ClaimScorer | None,
    prompt_sets: list[_PromptSet],
    test: Sequence[Claim],
    batched: bool,
    progress: Progress | None,
) -> list[tuple[_PromptSet, list[float]]]:
    """Score every test claim after each prompt set's context: one call per set (batched).

    Each call is recorded as phase "eval:<method>" (scoring.base.record_calls).
    """
    out = []
    for done, p in enumerate(tqdm(prompt_sets, desc=f"evaluate {test[0].country}", unit="call", leave=False), start=1):
        backend = chat_scorer if p.kind == "chat" else scorer
        requests = [ScoreRequest(p.context, query, p.kind) for query in test]
        with record_calls(backend, f"eval:{p.method}"):
            scores = backend.score(requests) if batched else [s for r in requests for s in backend.score([r])]
        if len(scores) != len(requests):
            raise RuntimeError(f"scorer returned {len(scores)} scores for {len(requests)} requests ({p.method})")
        out.append((p, [float(s) for s in scores]))
        if progress is not None:
            progress(done, len(prompt_sets))
    return out


def _predictions_frame(
    run_id: str, country: str, scored: list[tuple[_PromptSet, list[float]]], test: Sequence[Claim]
) -> pl.DataFrame:
    rows = [
        (run_id, country, p.method, p.experiment, p.n_demos, p.repeat, p.icm_seed,
         c.claim_id, c.group_id, s, int(s > 0), c.gold)
        for p, scores in scored
        for c, s in zip(test, scores, strict=True)
    ]
    return pl.DataFrame(rows, schema=PREDICTION_SCHEMA, orient="row")


def _demos_frame(
    run_id: str, country: str, scored: list[tuple[_PromptSet, list[float]]]
) -> pl.DataFrame:
    rows = [
        (
            run_id,
            country,
            p.method,
            p.experiment,
            p.n_demos,
            p.repeat,
            p.icm_seed,
            i,
            c.claim_id,
            label,
            c.gold,
        )
        for p, _ in scored
        if not p.method.startswith("option_prior")
        for i, (c, label) in enumerate(p.context)
    ]
    return pl.DataFrame(rows, schema=DEMO_SCHEMA, orient="row")
