"""A stub backend (not a model): synthetic scores, real prompt tokens, simulated prefix caches.

What `persona-icm plan` (persona_icm/cost.py) and the benchmarks (benchmarks/bench.py) run the
ICM search on to count its model work without a model.
"""

from __future__ import annotations

import hashlib
import time
from array import array

from persona_icm.icm.engine import prefix_order
from persona_icm.kv_cache import BlockChains, PrefixCache, block_hashes
from persona_icm.scoring.base import CallLog
from persona_icm.types import ScoreRequest

ENGINE_ORDER = "engine"  # a call's prompts in the order the engine sends them
PREFIX_ORDER = "prefix"  # every call one way (the engine's order before the alternation)


class SimulatedBackend(CallLog):
    """Synthetic scores (`synthetic.score_one`), each prompt tokenised by `encoder` and replayed
    through simulated prefix caches of `block`-token blocks.

    `lanes` maps an order (ENGINE_ORDER, PREFIX_ORDER) to caches by name; each call's prompts go
    through a lane's caches in that order and `uncached[order][name]` sums what the cache computes.
    The first lane's first cache gives the CallRecord's cached tokens. PREFIX_ORDER needs
    `claim_index` (claim id -> position). With `lower_bound`, every distinct prompt also goes once
    through an unbounded cache (`lower`). With `record`, each call's prompts (block hashes, tokens)
    are kept in the engine's order (`trace`).

    A prompt's block hashes come from its token pieces through `BlockChains` when the encoder
    gives pieces; `reference=True` hashes each prompt's whole token list (`block_hashes`) instead.
    """

    def __init__(self, synthetic, encoder, block: int, lanes: dict[str, dict], claim_index: dict[str, int] | None = None,
                 lower_bound: bool = False, record: bool = False, reference: bool = False):
        super().__init__(phase="icm")
        self.synthetic = synthetic
        self.encoder = encoder
        self.block = block
        self.lanes: dict[str, dict[object, PrefixCache]] = lanes
        self.uncached = {order: dict.fromkeys(caches, 0) for order, caches in lanes.items()}
        self.claim_index = claim_index
        self.lower_bound = PrefixCache(block, None) if lower_bound else None
        self.seen: set[bytes] = set()
        self.lower = {"prompts": 0, "tokens": 0, "uncached": 0}
        self.record_prompts = record
        self.trace: list[list[tuple[list[int], int]]] = []
        self.chains = None if reference or not hasattr(encoder, "pieces") else BlockChains(block)

    prompts_per_call = 256  # vLLM's default max_num_seqs on most GPUs (the engine this backend imitates)

    def score(self, requests: list[ScoreRequest]) -> list[float]:
        start = time.perf_counter()
        scores = [self.synthetic.score_one(r) for r in requests]
        blocks = [self._blocks(r) for r in requests]
        prompts = [(hashes, n) for hashes, n, _ in blocks]
        cached = None
        for order, caches in self.lanes.items():
            sequence = [prompts[i] for i in self._order(order, requests)]
            for name, cache in caches.items():
                hits = sum(cache.admit(hashes, n) for hashes, n in sequence)
                self.uncached[order][name] += sum(n for _, n in sequence) - hits
                cached = hits if cached is None else cached
        if self.lower_bound is not None:
            for hashes, n, tail in blocks:
                self._lower_bound(hashes, n, tail)
        if self.record_prompts:
            self.trace.append(prompts)
        self.record(len(requests), sum(n for _, n in prompts), cached, time.perf_counter() - start)
        return scores

    def _blocks(self, request: ScoreRequest) -> tuple[list[int], int, tuple[int, ...]]:
        """The prompt's block hashes, its length in tokens and the tokens of its partial last block."""
        if self.chains is not None:
            return self.chains.hashes(self.encoder.pieces(request))
        ids = self.encoder.encode(request)
        hashes = block_hashes(ids, self.block)
        return hashes, len(ids), tuple(ids[len(hashes) * self.block :])

    def _order(self, order: str, requests: list[ScoreRequest]) -> list[int]:
        positions = range(len(requests))
        if order == PREFIX_ORDER:
            return sorted(positions, key=lambda i: prefix_order(self._item(requests[i])))
        return list(positions)

    def _item(self, request: ScoreRequest):
        index = self.claim_index
        return index[request.query.claim_id], tuple((index[c.claim_id], y) for c, y in request.context)

    def _lower_bound(self, hashes: list[int], n: int, tail: tuple[int, ...]) -> None:
        digest = hashlib.blake2b(array("q", hashes).tobytes() + bytes(array("i", tail)), digest_size=16).digest()
        if digest not in self.seen:
            self.seen.add(digest)
            self.lower["prompts"] += 1
            self.lower["tokens"] += n
            self.lower["uncached"] += n - self.lower_bound.admit(hashes, n)
