"""The model work of a run's ICM searches, estimated without a model (what `persona-icm plan` prints).

Each search runs on the real engine (persona_icm/icm, the fast engine) with synthetic scores
(persona_icm/scoring/synthetic.py, order-invariant): a trajectory of the configured size and
schedule, not the one a real model will take, whose scores decide how many moves are accepted
and how often ConsistencyFix runs. Every prompt the engine sends is tokenised with the base
model's tokenizer and replayed, in the order sent, through a simulated prefix cache of each
capacity (persona_icm/kv_cache.py, vLLM's block pool); prefilled tokens = prompt tokens - cached.

GPU-hours assume prefill is compute-bound: 2 x parameters FLOPs per prefilled token at 40% of an
H100's dense bf16 peak (989 TFLOP/s), for any tensor-parallel size. Left out: attention FLOPs
(about +10% for an 8B model at 4k-token prompts, less for 70B), the one decoded token, engine
start-up and the evaluation after the search.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

from persona_icm.config import IcmConfig
from persona_icm.kv_cache import PrefixCache
from persona_icm.scoring.base import call_totals
from persona_icm.scoring.simulated import ENGINE_ORDER, SimulatedBackend
from persona_icm.types import Claim

CAPACITIES: tuple[int | None, ...] = (131_072, 524_288, None)  # KV cache tokens; None: unbounded
H100_BF16_FLOPS = 989e12
PREFILL_MFU = 0.4
MODEL_PARAMETERS = {"8B": 8.03e9, "70B": 70.6e9}  # Llama-3.1


def gpu_hours(prefilled_tokens: int, parameters: float) -> float:
    """H100-hours to prefill `prefilled_tokens` through a dense model of `parameters` weights."""
    return prefilled_tokens * 2 * parameters / (PREFILL_MFU * H100_BF16_FLOPS) / 3600


@contextmanager
def cyclic_gc_paused():
    """No cyclic garbage collection inside: the simulation keeps millions of acyclic objects (hash
    memo, cache state) that each full collection would walk again, for nothing to free (it took
    about a third of a search's time). Cycles made meanwhile are collected after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class SearchCost:
    country: str
    seed: int
    claims: int
    calls: int
    prompts: int
    prompt_tokens: int
    prefilled: dict[int | None, int] = field(default_factory=dict)  # capacity -> prefilled tokens


def search_cost(
    claims: list[Claim], icm: IcmConfig, encoder, capacities: tuple[int | None, ...] = CAPACITIES, block: int = 16,
    reference: bool = False,
) -> SearchCost:
    """Model work of one search over `claims` (one country, one seed) at each cache capacity.

    `reference=True` takes the straightforward path, the same numbers slower (tests/test_plan.py
    compares them): each prompt's whole token list hashed block by block, vLLM's block pool moved
    block by block through its ordered free queue, the cyclic garbage collector on."""
    from persona_icm.icm import run_icm
    from persona_icm.scoring.synthetic import SyntheticScorer

    truth = {c.claim_id: c.gold for c in claims}
    scores = SyntheticScorer(truth, signal=1.0, prior=0.5, seed=icm.seed, order_invariant=True)
    caches = {c: PrefixCache(block, c, reference=reference) for c in capacities}
    backend = SimulatedBackend(scores, encoder, block, {ENGINE_ORDER: caches}, reference=reference)
    with nullcontext() if reference else cyclic_gc_paused():
        run_icm(claims, backend, icm.model_copy(update={"engine": "fast"}), show_progress=False)
    totals = call_totals(backend.calls)
    return SearchCost(
        country=claims[0].country,
        seed=icm.seed,
        claims=len(claims),
        calls=totals.calls,
        prompts=totals.prompts,
        prompt_tokens=totals.prompt_tokens,
        prefilled=backend.uncached[ENGINE_ORDER],
    )
