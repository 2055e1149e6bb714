"""A simulated prefix (KV) cache: how many tokens of each prompt a vLLM-style engine would take from
its cache instead of computing them.

    block_hashes(ids, block) -> one chained hash per full block of the prompt
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

from collections import OrderedDict
from typing import Literal

Eviction = Literal["vllm", "lru"]


def block_hashes(ids: list[int], block: int) -> list[int]:
    """One hash per full block, chained over the whole prefix (a block's hash names its prefix)."""
    hashes, h = [], 0
    for start in range(0, len(ids) - block + 1, block):
        h = hash((h, tuple(ids[start : start + block])))
        hashes.append(h)
    return hashes


def hit_cap(n_tokens: int, block: int) -> int:
    """The most blocks a prompt of n_tokens may take from the cache: its last token is computed."""
    return max(0, n_tokens - 1) // block


class PrefixCache:
    """Simulated prefix cache of `capacity_tokens` (None: unbounded) in `block`-token blocks."""

    def __init__(self, block: int = 16, capacity_tokens: int | None = None, eviction: Eviction = "vllm"):
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
            self._policy = _VllmBlockPool(block, self.capacity, self)

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
        hits = 0
        for h in hashes[: hit_cap(n_tokens, self.block)]:
            if h not in self.known:
                break
            hits += 1
        self.known.update(hashes)
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
    """vLLM v1's block pool for requests run one at a time (see the module docstring)."""

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
