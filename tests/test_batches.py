"""The fanned-out run's share of work per gpu worker (persona_icm/batches.py): one batch per worker,
each unit in exactly one batch, loads balanced, the same plan every time, and the seeds' wave."""

from __future__ import annotations

import itertools

import pytest

from persona_icm.batches import SplitSize, country_cost, longest_first, plan_batches

# the fork's 14 countries' sizes are close to each other; these differ more, to make balance matter
SIZES = [SplitSize(f"C{i}", train, test) for i, (train, test) in
         enumerate([(85, 28), (40, 12), (120, 30), (60, 20), (85, 28), (10, 4), (200, 60), (33, 11), (77, 25)])]


def loads(batches: list[list[str]], seeds: int) -> list[float]:
    size = {s.country: s for s in SIZES}
    return [sum(country_cost(size[c], seeds) for c in batch) for batch in batches]


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 8, 9])
def test_every_country_is_in_exactly_one_of_min_workers_countries_batches(workers):
    plan = plan_batches(SIZES, [0], workers)
    assert len(plan.country_batches) == min(workers, len(SIZES))
    assert all(plan.country_batches)
    placed = [c for batch in plan.country_batches for c in batch]
    assert sorted(placed) == sorted(s.country for s in SIZES)
    assert plan.search_batches == []


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_batches_are_balanced_within_the_largest_unit(workers):
    """LPT's bound: no batch carries more than the lightest one plus one unit's cost."""
    batch_loads = loads(plan_batches(SIZES, [0], workers).country_batches, 1)
    largest = max(country_cost(s, 1) for s in SIZES)
    assert max(batch_loads) - min(batch_loads) <= largest
    # and the heaviest batch is no more than 4/3 of the perfect share (LPT: <= 4/3 of the optimum)
    assert max(batch_loads) <= 4 / 3 * max(sum(batch_loads) / workers, largest)


def test_two_workers_split_this_example_as_lpt_does():
    plan = plan_batches(SIZES[:4], [0], 2)  # costs 113, 52, 150, 80
    assert plan.country_batches == [["C2", "C1"], ["C0", "C3"]]  # loads 202 and 193
    assert loads(plan.country_batches, 1) == [202, 193]


def test_the_plan_is_the_same_every_time_and_ties_keep_the_input_order():
    assert all(plan_batches(SIZES, [0, 1], 3) == plan_batches(SIZES, [0, 1], 3) for _ in range(5))
    same = [SplitSize(c, 10, 5) for c in ("A", "B", "C", "D")]
    assert plan_batches(same, [0], 2).country_batches == [["A", "C"], ["B", "D"]]


def test_more_workers_than_countries_gives_each_country_its_own_batch():
    plan = plan_batches(SIZES[:3], [0], 8)
    assert plan.country_batches == [["C2"], ["C0"], ["C1"]]


def test_several_seeds_with_fewer_countries_than_workers_search_first_on_every_worker():
    plan = plan_batches(SIZES[:2], [0, 1, 2], 4)  # 6 searches, 4 workers
    searches = [s for batch in plan.search_batches for s in batch]
    assert len(plan.search_batches) == 4
    assert sorted(searches) == sorted(itertools.product(["C0", "C1"], [0, 1, 2]))  # each exactly once
    # the larger country's searches first, one per worker; the smaller one's fill the lightest
    assert plan.search_batches == [[("C0", 0)], [("C0", 1)], [("C0", 2)], [("C1", 0), ("C1", 1), ("C1", 2)]]
    assert plan.country_batches == [["C0"], ["C1"]]
    # one country, three seeds, two workers: the searches on both, then the country
    one = plan_batches(SIZES[:1], [0, 1, 2], 2)
    assert one.search_batches == [[("C0", 0), ("C0", 2)], [("C0", 1)]] and one.country_batches == [["C0"]]


def test_no_search_wave_with_one_seed_or_as_many_countries_as_workers():
    assert plan_batches(SIZES[:1], [0], 4).search_batches == []
    plan = plan_batches(SIZES[:4], [0, 1], 4)  # every worker has a country: the seeds search inside it
    assert plan.search_batches == [] and len(plan.country_batches) == 4


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="gpu workers must be at least 1, got 0"):
        plan_batches(SIZES, [0], 0)
    with pytest.raises(ValueError, match="a country appears twice"):
        plan_batches([SIZES[0], SIZES[0]], [0], 2)
    with pytest.raises(ValueError, match="bins must be at least 1"):
        longest_first([1], float, 0)


@pytest.mark.parametrize("workers", [1, 2, 4, 9, 16])
@pytest.mark.parametrize("models", [1, 2, 3])
def test_a_study_starts_at_most_workers_times_models_engines(workers, models):
    """Each model keeps its engine on a worker for its whole share of countries: with one seed, a study
    never starts more than W x M base-model engines, and every (model, country) is in exactly one batch."""
    from persona_icm.batches import engine_start_bound, engine_starts, study_plans

    plans = study_plans(SIZES, [0], workers, models)
    assert len(plans) == models
    assert engine_starts(plans) == engine_start_bound(len(SIZES), 1, workers, models) <= workers * models
    for plan in plans:
        assert sorted(c for batch in plan.country_batches for c in batch) == sorted(s.country for s in SIZES)


def test_the_seed_wave_of_a_study_stays_below_twice_workers_times_models():
    from persona_icm.batches import engine_start_bound, engine_starts, study_plans

    plans = study_plans(SIZES[:2], [0, 1, 2], 4, 2)  # per model: 4 search batches, 2 country batches
    assert engine_starts(plans) == engine_start_bound(2, 3, 4, 2) == 12
    assert engine_starts(plans) < 2 * 4 * 2
    with pytest.raises(ValueError, match="at least 1 base model"):
        study_plans(SIZES, [0], 2, 0)
