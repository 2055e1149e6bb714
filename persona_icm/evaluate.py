"""Many-shot evaluation of labelled demo sets on held-out claims (docs/method.md "Evaluation protocol").

Which methods exist, and what each needs and produces, is persona_icm/methods.py; this module
runs them. For one country: ICM labels, golden labels and accuracy-matched random labels of the same demo
claims are each shown to the base model in `eval_repeats` seeded random orders, and every test
claim is scored after the identical demo context: one prompt set per (method, demo set, order); a
backend call takes as many whole prompt sets of one method as the scorer's `prompts_per_call` holds.
Zero-shot base and zero-shot chat are scored once (deterministic). `option_prior_*` is the
model-free confound check: a test claim scores (demos with its exact option text labelled True)
- (labelled False). The accuracy-vs-demos curve samples whole groups of the demo pool for each
size and each repeat; golden, ICM and random-matched labels use the same sampled claims and order.

Outputs (polars), the source of truth for every metric (see persona_icm/metrics.py):
- predictions(run_id, country, method, experiment, n_demos, repeat, icm_seed, claim_id, group_id,
  score, pred, gold): one row per test claim per evaluated prompt set.
  method: a registered method's stored name (persona_icm/methods.py: icm | golden | random_matched |
  zero_shot_base | zero_shot_chat | option_prior_golden | option_prior_icm). experiment: "main" (the headline comparison: full demo pool, zero-shot)
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
from persona_icm.methods import Method, methods
from persona_icm.methods import accuracy_matched_labels as accuracy_matched_labels  # noqa: F401 (re-exported)
from persona_icm.methods import method as method_record
from persona_icm.methods import option_prior_scores as option_prior_scores  # noqa: F401 (re-exported)
from persona_icm.scoring.base import ClaimScorer, ScoreRequest, prompts_per_call, record_calls
from persona_icm.types import NO_ICM_SEED as NO_ICM_SEED

log = logging.getLogger(__name__)

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
    """Test claims scored after one fixed demo context (or zero-shot)."""

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
    demo_methods = [m for m in methods() if m.uses_demos and not m.model_free]
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
                for method in demo_methods:
                    labels = method.produce(ordered, icm, rng)
                    if labels is None:
                        continue
                    sets.append(
                        _PromptSet(
                            method.name,
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
    prompts_per_call: int | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Predictions of every configured method on `test` for one country.

    train: the demo candidates (the ICM search's training claims). icm_labels: one ICM run as
    {claim_id: label}, or several as {icm_seed: {claim_id: label}}; only labelled claims are
    demos, and golden/random-matched use the same claims. Without ICM labels, golden uses all
    of `train` and the ICM-based methods are skipped. rng defaults to default_rng(config.seed).
    batched=False scores one prompt per backend call: the reference path for the batching test.
    prompts_per_call: how many prompts a backend call may carry (whole prompt sets, at least one);
    None: the scorer's own `prompts_per_call` (scoring.base.prompts_per_call).
    """
    icm_runs = _as_runs(icm_labels)
    _check_inputs(train, test, icm_runs)
    rng = rng if rng is not None else np.random.default_rng(config.seed)
    country = test[0].country
    requested = [m for m in methods() if m.config_name in set(config.methods)]
    skipped = _skipped(requested, bool(icm_runs), chat_scorer is not None)
    for name, reason in skipped.items():
        log.warning("evaluation of %s skipped for %s: %s", name, country, reason)
    runnable = [m for m in requested if _unavailable(m, bool(icm_runs), chat_scorer is not None) is None]
    names = {m.name for m in runnable}

    planned = plan_prompt_sets(train, icm_runs, config, rng)
    prompt_sets = [p for p in planned if p.method in names]
    prompt_sets += [
        _PromptSet(m.name, "main", 0, 0, NO_ICM_SEED, (), kind="chat" if m.uses_chat_model else "base")
        for m in runnable
        if not m.uses_demos
    ]

    scored = _score_prompt_sets(scorer, chat_scorer, prompt_sets, test, batched, prompts_per_call, progress)

    model_free = [m for m in runnable if m.model_free]
    for p in planned:
        for m in model_free:
            # Order does not change these scores: one row per demo set (main: repeat 0 only).
            if p.method == m.scores_demos_of and (p.experiment == "curve" or p.repeat == 0):
                derived = _PromptSet(m.name, p.experiment, p.n_demos, p.repeat, p.icm_seed, p.context)
                scored.append((derived, m.produce(p.context, test)))

    return EvalResult(
        _predictions_frame(run_id, country, scored, test),
        _demos_frame(run_id, country, scored),
        skipped,
    )


def _unavailable(method: Method, have_icm: bool, have_chat: bool) -> str | None:
    """Why `method` cannot run here, or None."""
    if method.uses_icm_labels and not have_icm:
        return "no ICM labels given"
    if method.uses_chat_model and not have_chat:
        return "no chat model configured"
    return None


def _skipped(requested: list[Method], have_icm: bool, have_chat: bool) -> dict[str, str]:
    """eval.methods names none of whose stored methods can run, with the reason."""
    reasons: dict[str, list[str | None]] = {}
    for m in requested:
        reasons.setdefault(m.config_name, []).append(_unavailable(m, have_icm, have_chat))
    return {name: why[0] for name, why in reasons.items() if all(why)}


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
    prompts_per_call: int | None,
    progress: Progress | None,
) -> list[tuple[_PromptSet, list[float]]]:
    """Score every test claim after each prompt set's context, in plan order.

    Batched, a backend call takes as many whole prompt sets of one method as fit in the backend's
    `prompts_per_call` (one set at least), each set's prompts adjacent; each call is recorded as
    phase "eval:<method>" (scoring.base.record_calls). `progress` counts prompt sets.
    """
    scores: dict[int, list[float]] = {}
    bar = tqdm(total=len(prompt_sets), desc=f"evaluate {test[0].country}", unit="set", leave=False)
    for call in _calls(prompt_sets, len(test), lambda kind: _per_call(scorer, chat_scorer, kind, prompts_per_call)):
        first = prompt_sets[call[0]]
        backend = chat_scorer if first.kind == "chat" else scorer
        requests = [ScoreRequest(prompt_sets[i].context, query, first.kind) for i in call for query in test]
        with record_calls(backend, f"eval:{first.method}"):
            got = backend.score(requests) if batched else [s for r in requests for s in backend.score([r])]
        if len(got) != len(requests):
            raise RuntimeError(f"scorer returned {len(got)} scores for {len(requests)} requests ({first.method})")
        for k, i in enumerate(call):
            scores[i] = [float(s) for s in got[k * len(test) : (k + 1) * len(test)]]
            bar.update()
            if progress is not None:
                progress(len(scores), len(prompt_sets))
    bar.close()
    return [(p, scores[i]) for i, p in enumerate(prompt_sets)]


def _per_call(scorer: ClaimScorer, chat_scorer: ClaimScorer | None, kind: str, given: int | None) -> int:
    return given if given is not None else prompts_per_call(chat_scorer if kind == "chat" else scorer)


def _calls(prompt_sets: list[_PromptSet], n_queries: int, per_call: Callable[[str], int]) -> list[list[int]]:
    """Indices of `prompt_sets` grouped into backend calls: the sets of one (method, kind) in plan
    order, as many per call as fit in `per_call(kind)` prompts of `n_queries` each (at least one).
    Methods keep the order of their first set."""
    by_method: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(prompt_sets):
        by_method.setdefault((p.method, p.kind), []).append(i)
    calls = []
    for (_, kind), indices in by_method.items():
        size = max(1, per_call(kind) // n_queries)
        calls += [indices[a : a + size] for a in range(0, len(indices), size)]
    return calls


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
        if not method_record(p.method).model_free
        for i, (c, label) in enumerate(p.context)
    ]
    return pl.DataFrame(rows, schema=DEMO_SCHEMA, orient="row")
