"""A simulated prefix (KV) cache: how many tokens of each prompt a vLLM-style engine would take from
its cache instead of computing them.

    block_hashes(ids, block) -> one chained hash per full block of the prompt
    BlockChains(block).hashes(pieces) -> the same hashes for a prompt given as token pieces, each
        piece's blocks hashed once per prefix it follows (what `persona-icm plan` uses)
    PrefixCache(block=16, capacity_tokens=None, eviction="vllm").admit(hashes, n_tokens) -> cached tokens

Hits (both eviction models, as vLLM v1's `KVCacheManager.get_computed_blocks`): the leading run of
full blocks whose chained hash is cached, capped at (n_tokens - 1) // block blocks. So a fully
cached prompt still computes its last token, and when its length is a multiple of the block size
it recomputes that whole last block (vLLM keeps computed tokens block-aligned).

`eviction="vllm"` models vLLM v1's block pool (read from vLLM 0.32's `v1/core/block_pool.py`,
`kv_cache_utils.FreeKVCacheBlockQueue`, `single_type_kv_cache_manager.py`):
- `capacity_tokens // block` physical blocks, all in a free queue at start (vLLM's
  `num_gpu_blocks` is one more: block 0 is its null block, never used for KV);
- a prompt's hits are touched: taken out of the free queue;
- its other ceil(n_tokens / block) - hits blocks are popped from the free-queue head; a popped
  block that still holds a cached hash loses it (that is the eviction);
- its full blocks are then cached under their hashes (a hash may name several physical blocks:
  vLLM does not de-duplicate; a lookup takes the first one cached);
- when the prompt finishes, its blocks are freed tail first: hashed blocks are appended to the
  free-queue tail (so its prefix blocks, appended last, are evicted last), the unhashed partial
  last block is put at the head (reused first).
`eviction="lru"` is the earlier model: a set of cached block hashes in LRU order, every block of a
prompt (hit or not) becomes most recent in prompt order, no physical blocks.

Not modelled: requests run one at a time, each finishing before the next starts. A real engine
batches requests (`max_num_seqs`, `max_num_batched_tokens`): running requests pin their blocks
(ref_cnt > 0, so capacity is smaller while they run), requests of the same step hit blocks their
neighbours allocated in that step, blocks are freed in the order requests finish, and a request
that does not fit waits or preempts another. Also not modelled: chunked prefill, the partial-block
("fine-grained") hash lookup, sliding-window or Mamba layers, multimodal or LoRA extra keys,
and a hash collision (Python's hash of a tuple stands in for vLLM's sha256).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from functools import partial
from itertools import takewhile, zip_longest
from operator import is_not
from typing import Literal

Eviction = Literal["vllm", "lru"]
Tokens = tuple[int, ...]
Chain = tuple[int, Tokens]  # block_hashes' state after a prefix: its last full block's hash (0: none), the tokens after it


def block_hashes(ids: list[int], block: int) -> list[int]:
    """One hash per full block, chained over the whole prefix (a block's hash names its prefix)."""
    hashes, h = [], 0
    for start in range(0, len(ids) - block + 1, block):
        h = hash((h, tuple(ids[start : start + block])))
        hashes.append(h)
    return hashes


class BlockChains:
    """`block_hashes` of prompts given as token pieces (`PromptEncoder.pieces`): the same hashes,
    each piece's blocks hashed once per chain it follows.

    The hashes a piece adds depend only on the chain before it (`Chain`), so prompts that share
    leading pieces (header, demo rows) share that work: a prompt costs a dictionary lookup per
    piece instead of a hash per block. Chains are numbered; a step is keyed by the piece object
    (the encoder's cached tuples) and holds it, so its id stays unique while the step is kept.
    """

    def __init__(self, block: int):
        self.block = block
        self._chains: list[Chain] = [(0, ())]
        self._numbers: dict[Chain, int] = {(0, ()): 0}
        self._steps: dict[tuple[int, int], tuple[Tokens, int, Tokens]] = {}  # (chain, id(piece)) -> (hashes, chain, piece)

    def hashes(self, pieces: Iterable[Tokens]) -> tuple[list[int], int, Tokens]:
        """The concatenated pieces' block_hashes, their length in tokens and their partial last block."""
        steps, chain, hashes = self._steps, 0, []
        for piece in pieces:
            added, chain, _ = steps.get((chain, id(piece))) or self._step(chain, piece)
            hashes += added
        tail = self._chains[chain][1]
        return hashes, len(hashes) * self.block + len(tail), tail

    def _step(self, number: int, piece: Tokens) -> tuple[Tokens, int, Tokens]:
        added, chain = extend_chain(self._chains[number], piece, self.block)
        after = self._numbers.setdefault(chain, len(self._chains))
        if after == len(self._chains):
            self._chains.append(chain)
        step = self._steps[(number, id(piece))] = (added, after, piece)
        return step


def extend_chain(chain: Chain, piece: Tokens, block: int) -> tuple[Tokens, Chain]:
    """The hashes of the full blocks that `piece` completes after `chain` (as block_hashes chains
    them), and the chain after it."""
    h, tokens = chain[0], chain[1] + tuple(piece)
    end = len(tokens) - len(tokens) % block
    hashes = []
    for start in range(0, end, block):
        h = hash((h, tokens[start : start + block]))
        hashes.append(h)
    return tuple(hashes), (h, tokens[end:])


def hit_cap(n_tokens: int, block: int) -> int:
    """The most blocks a prompt of n_tokens may take from the cache: its last token is computed."""
    return max(0, n_tokens - 1) // block


class PrefixCache:
    """Simulated prefix cache of `capacity_tokens` (None: unbounded) in `block`-token blocks.

    `reference=True` runs vLLM's pool block by block through an ordered free queue (`_VllmBlockPool`,
    the model as written above); the default keeps that queue by age (`_VllmBlockPoolByAge`): the
    same hits and evictions in about a third of the time.
    """

    def __init__(self, block: int = 16, capacity_tokens: int | None = None, eviction: Eviction = "vllm",
                 reference: bool = False):
        if eviction not in ("vllm", "lru"):
            raise ValueError(f"eviction must be 'vllm' or 'lru', got {eviction!r}")
        self.block = block
        self.capacity_tokens = capacity_tokens
        self.eviction = eviction
        self.capacity = None if capacity_tokens is None else capacity_tokens // block  # blocks
        self.evictions = 0  # cached blocks dropped to make room
        if self.capacity is None:
            self._policy = _Unbounded(block)
        elif eviction == "lru":
            self._policy = _LruBlocks(block, self.capacity, self)
        else:
            pool = _VllmBlockPool if reference else _VllmBlockPoolByAge
            self._policy = pool(block, self.capacity, self)

    def admit(self, hashes: list[int], n_tokens: int) -> int:
        """Process one prompt (its full blocks' hashes and its length); returns its cached tokens."""
        return self._policy.admit(hashes, n_tokens)

    def cached_blocks(self) -> int:
        """Blocks that currently hold a cached hash."""
        return self._policy.cached_blocks()


class _Unbounded:
    """Nothing is ever evicted: a block is cached once any prompt computed it."""

    def __init__(self, block: int):
        self.block = block
        self.known: set[int] = set()

    def admit(self, hashes: list[int], n_tokens: int) -> int:
        hits = len(list(takewhile(self.known.__contains__, hashes[: hit_cap(n_tokens, self.block)])))
        self.known.update(hashes[hits:])
        return hits * self.block

    def cached_blocks(self) -> int:
        return len(self.known)


class _LruBlocks:
    """Cached hashes in LRU order; all of a prompt's blocks become most recent, in prompt order."""

    def __init__(self, block: int, capacity: int, owner: PrefixCache):
        self.block = block
        self.capacity = capacity
        self.owner = owner
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def admit(self, hashes: list[int], n_tokens: int) -> int:
        cap = hit_cap(n_tokens, self.block)
        hits, missed = 0, False
        for h in hashes:
            if h in self.blocks:
                self.blocks.move_to_end(h)
                if not missed and hits < cap:
                    hits += 1
            else:
                missed = True
                self.blocks[h] = None
                if len(self.blocks) > self.capacity:
                    self.blocks.popitem(last=False)
                    self.owner.evictions += 1
        return hits * self.block

    def cached_blocks(self) -> int:
        return len(self.blocks)


class _VllmBlockPool:
    """vLLM v1's block pool for requests run one at a time (see the module docstring), one block
    at a time: the reference for `_VllmBlockPoolByAge`."""

    def __init__(self, block: int, capacity: int, owner: PrefixCache):
        self.block = block
        self.capacity = capacity
        self.owner = owner
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(capacity))  # head = next to evict
        self.hash_of: list[int | None] = [None] * capacity
        self.holders: dict[int, list[int]] = {}  # hash -> physical blocks holding it, first cached first

    def admit(self, hashes: list[int], n_tokens: int) -> int:
        needed = -(-n_tokens // self.block)
        if needed > self.capacity:
            raise ValueError(f"a prompt of {n_tokens} tokens needs {needed} blocks; the cache has {self.capacity}")
        hit = self._touch_leading_hits(hashes, hit_cap(n_tokens, self.block))
        new = self._pop_free(needed - len(hit))
        for physical, h in zip(new, hashes[len(hit) :], strict=False):
            self._cache(physical, h)
        self._free_tail_first(hit + new)
        return len(hit) * self.block

    def _touch_leading_hits(self, hashes: list[int], cap: int) -> list[int]:
        hit = []
        for h in hashes[:cap]:
            holders = self.holders.get(h)
            if not holders:
                break
            physical = holders[0]
            del self.free[physical]
            hit.append(physical)
        return hit

    def _pop_free(self, count: int) -> list[int]:
        popped = []
        for _ in range(count):
            physical, _ = self.free.popitem(last=False)
            self._evict(physical)
            popped.append(physical)
        return popped

    def _evict(self, physical: int) -> None:
        h = self.hash_of[physical]
        if h is None:
            return
        self.hash_of[physical] = None
        holders = self.holders[h]
        holders.remove(physical)
        if not holders:
            del self.holders[h]
        self.owner.evictions += 1

    def _cache(self, physical: int, h: int) -> None:
        self.hash_of[physical] = h
        self.holders.setdefault(h, []).append(physical)

    def _free_tail_first(self, blocks: list[int]) -> None:
        unhashed = []
        for physical in reversed(blocks):
            self.free[physical] = None
            if self.hash_of[physical] is None:
                unhashed.append(physical)
        for physical in reversed(unhashed):  # to the head, keeping their order (vLLM's prepend_n)
            self.free.move_to_end(physical, last=False)

    def cached_blocks(self) -> int:
        return sum(len(v) for v in self.holders.values())


class _VllmBlockPoolByAge:
    """`_VllmBlockPool` without moving every block of every prompt through an ordered dict.

    With one request at a time the free queue has a fixed shape: the last prompt's unhashed
    partial block (at the head), then the blocks never used (in index order), then every hashed
    block ordered by the last prompt that used it, oldest first, deepest block of that prompt
    first. So each prompt's hashed blocks are kept as one list (`by_age`, popped from its end)
    and a block's entry counts only while `used[block]` still names that prompt: touching a hit
    just renumbers it. Same pops in the same order as the reference, so the same hits and evictions.
    A hash's holders are `first[h]`, then `more[h]` if any (vLLM does not de-duplicate; rare here).
    """

    def __init__(self, block: int, capacity: int, owner: PrefixCache):
        self.block = block
        self.capacity = capacity
        self.owner = owner
        self.hash_of: list[int | None] = [None] * capacity
        self.first: dict[int, int] = {}  # hash -> the physical block that cached it first (what a hit takes)
        self.more: dict[int, list[int]] = {}  # hash -> its other holders, first cached first
        self.head: list[int] = []  # unhashed partial blocks, next to pop first
        self.never_used = 0  # blocks never_used.. capacity-1 were never used
        self.by_age: deque[tuple[int, list[int]]] = deque()  # (prompt, its hashed blocks, shallowest first)
        self.used = [-1] * capacity  # block -> the last prompt that used it
        self.prompt = 0

    def admit(self, hashes: list[int], n_tokens: int) -> int:
        needed = -(-n_tokens // self.block)
        if needed > self.capacity:
            raise ValueError(f"a prompt of {n_tokens} tokens needs {needed} blocks; the cache has {self.capacity}")
        self.prompt += 1
        hit = list(takewhile(_is_held, map(self.first.get, hashes[: hit_cap(n_tokens, self.block)])))
        self._mark_used(hit)  # touched: out of the free queue
        new = self._pop_free(needed - len(hit))
        self._mark_used(new)
        full = hashes[len(hit) :]
        self._rehash(new, full)
        self.by_age.append((self.prompt, hit + new[: len(full)]))  # freed tail first: deepest first
        self.head[:0] = new[len(full) :]  # the unhashed partial block, to the head
        return len(hit) * self.block

    def _mark_used(self, blocks: list[int]) -> None:
        used, prompt = self.used, self.prompt
        for physical in blocks:
            used[physical] = prompt

    def _pop_free(self, count: int) -> list[int]:
        popped = self.head[:count]
        del self.head[:count]
        fresh = min(count - len(popped), self.capacity - self.never_used)
        popped += range(self.never_used, self.never_used + fresh)
        self.never_used += fresh
        used, by_age = self.used, self.by_age
        while len(popped) < count:
            prompt, blocks = by_age[0]
            live = [physical for physical in blocks if used[physical] == prompt]  # not used again since
            take = count - len(popped)
            popped += reversed(live[-take:])
            del live[-take:]
            if live:
                by_age[0] = (prompt, live)
            else:
                by_age.popleft()
        return popped

    def _rehash(self, blocks: list[int], hashes: list[int]) -> None:
        """Each popped block drops its hash (an eviction) and caches the prompt's next one (the
        partial block: none). The reference drops all, then caches all; block by block ends the
        same, as a block is popped once per prompt and a holder list keeps its order either way."""
        hash_of, first, more = self.hash_of, self.first, self.more
        evicted = 0
        for physical, h in zip_longest(blocks, hashes):
            old = hash_of[physical]
            if old is not None:
                evicted += 1
                if old in more:
                    self._drop_one_of_several(old, physical)
                else:
                    del first[old]
            hash_of[physical] = h
            if h is not None:
                if h in first:
                    more.setdefault(h, []).append(physical)
                else:
                    first[h] = physical
        self.owner.evictions += evicted

    def _drop_one_of_several(self, h: int, physical: int) -> None:
        holders = [self.first[h], *self.more.pop(h)]
        holders.remove(physical)
        self.first[h] = holders[0]
        if len(holders) > 1:
            self.more[h] = holders[1:]

    @property
    def holders(self) -> dict[int, list[int]]:
        """hash -> physical blocks holding it, first cached first (as `_VllmBlockPool.holders`)."""
        return {h: [physical, *self.more.get(h, ())] for h, physical in self.first.items()}

    def cached_blocks(self) -> int:
        return len(self.first) + sum(len(v) for v in self.more.values())


_is_held = partial(is_not, None)  # a hash's first holder was found
