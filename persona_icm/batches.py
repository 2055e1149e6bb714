"""How a fanned-out run shares its work among the gpu workers, so each model loads once per worker.

Every flow run on a gpu worker is a new process that loads its own engine (minutes for a 70B
model). So the parent does not start one flow run per country: it starts one batch per gpu worker,
and a batch runs its countries (or searches) one after another on one engine. Countries go to
min(workers, countries) batches by longest-processing-time-first on an estimated cost; with
several ICM seeds and fewer countries than workers, the (country, seed) searches first go to
min(workers, searches) batches of their own (a first wave), so the seeds use the idle workers,
and the country batches then take the searches from the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class SplitSize:
    """A country's claim counts, what its cost is estimated from."""

    country: str
    train: int
    test: int


@dataclass(frozen=True)
class BatchPlan:
    """search_batches: the first wave, each a list of (country, seed) (empty without that wave);
    country_batches: each a list of countries. Every batch is one flow run on one gpu worker."""

    search_batches: list[list[tuple[str, int]]]
    country_batches: list[list[str]]


def longest_first(items: Sequence[T], cost: Callable[[T], float], bins: int) -> list[list[T]]:
    """LPT: the items by cost, largest first (ties keep the input order), each to the bin with the
    least cost so far (ties: the lower bin). min(bins, len(items)) bins, none empty; a bin runs its
    items in the order they were given to it (largest first)."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    out: list[list[T]] = [[] for _ in range(min(bins, len(items)))]
    loads = [0.0] * len(out)
    for item in sorted(items, key=cost, reverse=True):  # sorted is stable: equal costs keep input order
        target = min(range(len(out)), key=lambda b: (loads[b], b))
        out[target].append(item)
        loads[target] += cost(item)
    return out


def search_cost(size: SplitSize) -> float:
    """One ICM search: its iterations each score prompts over the training claims."""
    return float(size.train)


def country_cost(size: SplitSize, searches: int) -> float:
    """A country's batch work: its `searches` searches done here (0 when a first wave ran them)
    and the evaluations on its test claims."""
    return search_cost(size) * searches + size.test


def plan_batches(sizes: Sequence[SplitSize], seeds: Sequence[int], workers: int) -> BatchPlan:
    """The batches of a fanned-out run over `workers` gpu workers (see the module doc)."""
    if workers < 1:
        raise ValueError(f"gpu workers must be at least 1, got {workers}")
    if len({s.country for s in sizes}) != len(sizes):
        raise ValueError(f"a country appears twice in {[s.country for s in sizes]}")
    by_country = {s.country: s for s in sizes}
    search_wave = len(seeds) > 1 and len(sizes) < workers
    search_batches: list[list[tuple[str, int]]] = []
    if search_wave:
        searches = [(s.country, seed) for s in sizes for seed in seeds]
        search_batches = longest_first(searches, lambda cs: search_cost(by_country[cs[0]]), workers)
    here = 0 if search_wave else len(seeds)
    country_batches = [[s.country for s in batch] for batch in longest_first(sizes, lambda s: country_cost(s, here), workers)]
    return BatchPlan(search_batches=search_batches, country_batches=country_batches)


def study_plans(sizes: Sequence[SplitSize], seeds: Sequence[int], workers: int, models: int) -> list[BatchPlan]:
    """A study's batches, model-major: each base model's plan (one model per batch), in base_models order.
    The parent starts a model's batches after the previous model's have finished, so a gpu worker holds
    one model's engine for its whole share of that model's countries."""
    if models < 1:
        raise ValueError(f"a study needs at least 1 base model, got {models}")
    return [plan_batches(sizes, seeds, workers) for _ in range(models)]


def engine_starts(plans: Sequence[BatchPlan]) -> int:
    """Base-model engine starts of these plans: every batch is a new process that loads its model once."""
    return sum(len(p.search_batches) + len(p.country_batches) for p in plans)


def engine_start_bound(countries: int, seeds: int, workers: int, models: int) -> int:
    """At most how many base-model engines a study of `models` models starts over `workers` gpu workers
    (the chat model's one start comes on top): W x M, as each model gets min(W, countries) batches, except
    with the search wave (several seeds, fewer countries than workers), which adds min(W, searches) per
    model to run the seeds in parallel on otherwise idle workers (below 2 W x M)."""
    search_wave = seeds > 1 and countries < workers
    per_model = min(workers, countries) + (min(workers, countries * seeds) if search_wave else 0)
    return per_model * models
