"""Execution engines: how the search's scores and energies are obtained from a ClaimScorer.

Both engines follow the same algorithm; only the model work differs (exactness: see Contract below).

- `ReferenceEngine`: the straightforward path. Every prompt the algorithm needs is sent on its
  own, one backend call per prompt, nothing remembered.
- `FastEngine`: trajectory-preserving speed-ups (docs/method.md "Exactness and determinism"):
  s memoised by (query, exact ordered context) in an LRU, U memoised by labelling; the energies
  asked for together (both ConsistencyFix options, plus the current state when it is new) go
  to the model as ONE backend call with only the prompts not yet known; the prompts of a call
  are sorted as token-free row sequences, so prompts sharing a prefix are adjacent (a depth-first
  walk of their prefix tree). A proposal for a labelled claim is the leave-one-out score of the
  last energy evaluation (a memo hit).
- Cache-aware order (cost only): consecutive evaluations of one labelling walk their prefix
  trees in opposite directions, and a call of several labellings (ConsistencyFix options) walks
  opposite to the last one, so a call starts with the prompts whose prefixes were computed last,
  the ones a bounded KV cache still holds (benchmarks/bench.py, docs/gpus.md).

Engines never touch the random generator, so the search's RNG call sequence is the same for both.

Contract: the two engines give the identical trace for any scorer whose score of a prompt is a
function of that prompt alone (tests/test_icm.py with the synthetic scorer; tests/test_icm_hf.py
with a real transformers model scored one prompt per forward pass). A batched model backend
(hf batches and shared-prefix KV, vLLM) reassociates floating point with the batch shape, so a
score can move by ~1e-7..1e-5 with the other prompts of its call; then the engines (and a
resumed vs an uninterrupted fast run, whose memo differs) take the same decisions except where
a decision sits within that noise of its threshold (s = 0, U tie, acceptance uniform). Neither
an engine that copies the fast engine's batches (the memo still changes what is in a batch) nor
a tie tolerance (it moves the threshold, it does not remove it) can close that gap; only a
batch-invariant scorer can. For bit-exact runs use hf with batch_size=1, prefix_reuse=False.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from persona_icm.config import IcmConfig
from persona_icm.icm.energy import Energy, energy, needs_zero_shot
from persona_icm.icm.state import Labelling, Pool, context_key
from persona_icm.scoring.base import ClaimScorer, ScoreRequest

Context = tuple[tuple[int, int], ...]
Item = tuple[int, Context]  # (query claim index, ordered context of (claim index, label))


@dataclass
class EngineStats:
    prompts_needed: int = 0  # prompts the algorithm asked for (what the reference engine sends)
    score_memo_hits: int = 0
    energy_evaluations: int = 0  # energies the algorithm asked for
    energy_memo_hits: int = 0


def leave_one_out(context: Context, index: int) -> Context:
    return tuple(row for row in context if row[0] != index)


class ReferenceEngine:
    """One prompt per backend call, no memo: the path the fast engine is tested against."""

    def __init__(self, pool: Pool, scorer: ClaimScorer, config: IcmConfig):
        self.pool = pool
        self.scorer = scorer
        self.config = config
        self.stats = EngineStats()
        self.zero_shot: dict[int, float] = {}  # claim index -> s(x | no demonstrations), calibrated objective

    def request(self, item: Item) -> ScoreRequest:
        query, context = item
        claims = self.pool.claims
        return ScoreRequest(tuple((claims[i], y) for i, y in context), claims[query], "base")

    def score(self, items: list[Item]) -> list[float]:
        self.stats.prompts_needed += len(items)
        return [self._checked(self.scorer.score([self.request(item)]), 1)[0] for item in items]

    def restore(self, labelling: Labelling, state: Energy) -> None:
        """A resumed search's current state (nothing to remember here)."""

    def proposal_score(self, labelling: Labelling, index: int) -> float:
        """s(x | D \\ {x}) with D's canonical context."""
        return self.score([(index, leave_one_out(labelling.context(self.pool), index))])[0]

    def energies(self, labellings: list[Labelling]) -> list[Energy]:
        self.stats.energy_evaluations += len(labellings)
        self._fetch_zero_shot(labellings)
        return [self._energy(lab, self.score(self._energy_items(lab))) for lab in labellings]

    def _fetch_zero_shot(self, labellings: list[Labelling]) -> None:
        """The calibrated objective's context-free scores of the labelled claims not yet known,
        each scored once per engine (a query with no demonstrations: the zero-shot base prompt)."""
        if not needs_zero_shot(self.config.objective):
            return
        missing = list(dict.fromkeys(i for lab in labellings for i in lab.labelled() if i not in self.zero_shot))
        if missing:
            self.zero_shot.update(zip(missing, self.score([(i, ()) for i in missing]), strict=True))

    def _energy_items(self, labelling: Labelling) -> list[Item]:
        context = labelling.context(self.pool)
        return [(i, leave_one_out(context, i)) for i, _ in context]

    def _energy(self, labelling: Labelling, scores: list[float]) -> Energy:
        zero_shot = self.zero_shot if needs_zero_shot(self.config.objective) else None
        return energy(labelling.context(self.pool), scores, len(labelling.inconsistent_pairs(self.pool)), self.config,
                      zero_shot)

    @staticmethod
    def _checked(scores: list[float], expected: int) -> list[float]:
        if len(scores) != expected:
            raise RuntimeError(f"scorer returned {len(scores)} scores for {expected} requests")
        return [float(s) for s in scores]


class FastEngine(ReferenceEngine):
    """Memoised, batched, prefix-ordered; identical numbers to `ReferenceEngine`."""

    def __init__(self, pool: Pool, scorer: ClaimScorer, config: IcmConfig):
        super().__init__(pool, scorer, config)
        self.score_memo: OrderedDict[tuple[int, bytes], float] = OrderedDict()
        self.energy_memo: dict[bytes, Energy] = {}
        self.last_walk_backwards = True  # direction of the last one-labelling call of several prompts

    def score(self, items: list[Item]) -> list[float]:
        self.stats.prompts_needed += len(items)
        return self._fetch(items)

    def restore(self, labelling: Labelling, state: Energy) -> None:
        """Remember the resumed state's energy and leave-one-out scores (from the checkpoint), as
        the uninterrupted run has them in memory: proposals for labelled claims then reuse them.
        Rescoring instead would put those prompts in other batches, and a real model's float32
        result can differ in the last bits with the batch."""
        self.energy_memo[labelling.key(self.pool)] = state
        for (query, context), s in zip(self._energy_items(labelling), state.scores, strict=True):
            self._remember((query, context_key(context)), s)

    def _fetch(self, items: list[Item], labellings: int = 1) -> list[float]:
        keys = [(q, context_key(ctx)) for q, ctx in items]
        known: dict[tuple[int, bytes], float] = {}
        missing: dict[tuple[int, bytes], Item] = {}
        for key, item in zip(keys, items, strict=True):
            if key in self.score_memo:
                known[key] = self.score_memo[key]
                self.score_memo.move_to_end(key)
                self.stats.score_memo_hits += 1
            elif key in known or key in missing:
                self.stats.score_memo_hits += 1
            else:
                missing[key] = item
        if missing:
            order = self._call_order(missing, labellings)
            scores = self._checked(self.scorer.score([self.request(missing[k]) for k in order]), len(order))
            for key, s in zip(order, scores, strict=True):
                known[key] = s
                self._remember(key, s)
        return [known[key] for key in keys]

    def _call_order(self, missing: dict[tuple[int, bytes], Item], labellings: int) -> list[tuple[int, bytes]]:
        """Prefix order, walked opposite to the last one-labelling call; only one-labelling calls
        set the direction, so they alternate.

        A bounded cache evicts what was used longest ago. When a call needs more of the previous
        call's prefixes than the cache holds, walking it in the same direction asks for the oldest
        blocks first, each new block evicting one the call needs next, so nearly all miss; the
        opposite direction uses the most recent blocks before anything evicts them. A call of
        several labellings leaves the direction alone: measured on the seed workload
        (benchmarks/bench.py), letting it flip too gains at 128k tokens and loses at 512k."""
        order = sorted(missing, key=lambda k: prefix_order(missing[k]))
        if len(order) < 2:
            return order
        backwards = not self.last_walk_backwards
        if labellings == 1:
            self.last_walk_backwards = backwards
        return order[::-1] if backwards else order

    def _remember(self, key: tuple[int, bytes], s: float) -> None:
        if self.config.score_memo_size == 0:
            return
        self.score_memo[key] = s
        if len(self.score_memo) > self.config.score_memo_size:
            self.score_memo.popitem(last=False)

    def energies(self, labellings: list[Labelling]) -> list[Energy]:
        self.stats.energy_evaluations += len(labellings)
        self.stats.prompts_needed += sum(lab.size for lab in labellings)
        keys = [lab.key(self.pool) for lab in labellings]
        todo = {}
        for key, lab in zip(keys, labellings, strict=True):
            if key in self.energy_memo or key in todo:
                self.stats.energy_memo_hits += 1
            else:
                todo[key] = lab
        self._fetch_zero_shot(list(todo.values()))
        items = {key: self._energy_items(lab) for key, lab in todo.items()}
        scores = self._fetch([item for group in items.values() for item in group], len(items))  # one backend call
        start = 0
        for key, lab in todo.items():
            n = len(items[key])
            self.energy_memo[key] = self._energy(lab, scores[start : start + n])
            start += n
        return [self.energy_memo[key] for key in keys]


def prefix_order(item: Item) -> tuple[int, ...]:
    """Sort key: the prompt as its sequence of rows (context rows, then the query row).

    Sorting prompts by this key is a depth-first walk of their prefix tree, so prompts that
    share a prefix are adjacent in the call. Row codes: 2*index + label for demonstrations,
    a value above every demonstration code for the query (its row differs from a demo row).
    """
    query, context = item
    return (*(2 * i + y for i, y in context), 1 << 40, query)


def make_engine(pool: Pool, scorer: ClaimScorer, config: IcmConfig) -> ReferenceEngine:
    if config.engine == "fast":
        return FastEngine(pool, scorer, config)
    if config.engine == "reference":
        return ReferenceEngine(pool, scorer, config)
    raise ValueError(f"icm.engine must be 'fast' or 'reference', got {config.engine!r}")
