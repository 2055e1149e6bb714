"""A deterministic synthetic scorer: a stand-in for an LM (not a model) in unit tests, benchmarks and
the cost estimate of `persona-icm plan` (persona_icm/cost.py).

Each claim has a hidden truth. The score of a query leans towards its truth by `signal`, scaled
by how well the context labels agree with their own truths (an inverted context flips it), plus
noise that is a pure function of (query, exact context). Any stale or misattributed score
therefore changes the result, which is what the exactness tests need.

`prior` adds a context-free lean towards the truth (a model's own knowledge); without it the
score is symmetric under flipping every label, so a search may as well find the inverted truth.
`order_invariant` makes the context noise ignore the order of the demonstrations (benchmarks
that compare prompt orders on one trajectory).
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from persona_icm.scoring.base import CallLog
from persona_icm.types import CallRecord, Claim, ScoreRequest


def _unit_normal(*parts: object) -> float:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return float(np.random.default_rng(int.from_bytes(digest, "little")).standard_normal())


class SyntheticScorer:
    def __init__(
        self,
        truth: dict[str, int],
        signal: float = 2.0,
        noise: float = 1.0,
        context_noise: float = 0.3,
        zero_shot_strength: float = 0.3,
        seed: int = 0,
        prior: float = 0.0,
        order_invariant: bool = False,
    ):
        self.truth = truth
        self.signal = signal
        self.noise = noise
        self.context_noise = context_noise
        self.zero_shot_strength = zero_shot_strength
        self.seed = seed
        self.prior = prior
        self.order_invariant = order_invariant
        self.log = CallLog()  # no `phase` attribute on the scorer: its records stay untagged, as they always were
        self._claim_noise: dict[str, float] = {}

    @property
    def calls(self) -> list[CallRecord]:
        return self.log.calls

    def score_one(self, request: ScoreRequest) -> float:
        query = request.query
        sign = 1.0 if self.truth[query.claim_id] == 1 else -1.0
        if request.context:
            agree = sum(label == self.truth[c.claim_id] for c, label in request.context) / len(request.context)
            strength = 2.0 * agree - 1.0  # a count over n, as np.mean gave it (both round the quotient once)
        else:
            strength = self.zero_shot_strength
        context_key = tuple((c.claim_id, label) for c, label in request.context)
        if self.order_invariant:
            context_key = tuple(sorted(context_key))
        return float(
            self.prior * sign
            + self.signal * sign * strength
            + self.noise * self._noise_of(query.claim_id)
            + self.context_noise * _unit_normal(self.seed, "ctx", query.claim_id, request.kind, context_key)
        )

    def _noise_of(self, claim_id: str) -> float:
        noise = self._claim_noise.get(claim_id)
        if noise is None:
            noise = self._claim_noise[claim_id] = _unit_normal(self.seed, "claim", claim_id)
        return noise

    def score(self, requests: list[ScoreRequest]) -> list[float]:
        start = time.perf_counter()
        scores = [self.score_one(r) for r in requests]
        tokens = sum(20 * (len(r.context) + 1) for r in requests)
        self.log.record(len(requests), tokens, None, time.perf_counter() - start)
        return scores


def make_claims(n_groups: int, country: str = "Testland", seed: int = 0) -> list[Claim]:
    """Groups of two claims, exactly one gold-True per group, True position seeded."""
    rng = np.random.default_rng(seed)
    claims = []
    for g in range(n_groups):
        true_first = bool(rng.integers(2))
        for k in range(2):
            gold = int((k == 0) == true_first)
            claims.append(
                Claim(f"g{g:03d}-o{k}", f"g{g:03d}", country, f"Synthetic question {g}?", f"Option {k} of {g}", gold)
            )
    return claims


class GoldSyntheticScorer(SyntheticScorer):
    """The synthetic scorer as backend `synthetic` (persona_icm/backends.py): each claim's hidden
    truth is its gold label, learnt from the requests; the seed is the spec's name. Not a model:
    it runs a study's orchestration (fan-out, caching, warehouse) at full size with no model or GPU
    (tests/test_load.py)."""

    def __init__(self, name: str):
        super().__init__(truth={}, seed=int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little"))

    def score(self, requests: list[ScoreRequest]) -> list[float]:
        for request in requests:
            for claim in (request.query, *(c for c, _ in request.context)):
                self.truth.setdefault(claim.claim_id, claim.gold)
        return super().score(requests)

    def probe(self, request: ScoreRequest) -> float:
        """Preflight's one check of a backend outside this process: nothing can be wrong here."""
        return self.score([request])[0]


def scorer_from_spec(spec, api_key: str | None = None) -> GoldSyntheticScorer:
    return GoldSyntheticScorer(spec.name)
