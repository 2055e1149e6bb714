"""The simulated prefix cache (persona_icm.kv_cache) on hand-made prompts whose answers are worked out
in the comments. Block size 4 throughout; a capacity of 12 tokens is 3 blocks."""

import pytest

from persona_icm.kv_cache import PrefixCache, block_hashes

P = list(range(100, 112))  # 3 full blocks: p1 p2 p3
Q = list(range(200, 208))  # 2 full blocks, nothing shared with P
R = P[:4] + [300, 301, 302, 303]  # p1, then a block of its own


def admit(cache, ids):
    return cache.admit(block_hashes(ids, cache.block), len(ids))


def test_block_hashes_are_chained_over_the_prefix():
    a = block_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9], 4)
    b = block_hashes([0, 2, 3, 4, 5, 6, 7, 8], 4)
    assert len(a) == 2 and len(b) == 2  # the partial block has no hash
    assert a[1] != b[1]  # same tokens 5..8, different prefix


@pytest.mark.parametrize("eviction", ["vllm", "lru"])
def test_hits_are_the_leading_cached_blocks_and_the_last_token_is_computed(eviction):
    cache = PrefixCache(block=4, capacity_tokens=None, eviction=eviction)
    ten = list(range(10))  # 2 full blocks + 2 tokens
    assert admit(cache, ten) == 0
    assert admit(cache, ten) == 8  # both full blocks hit, the partial block is computed
    assert admit(cache, ten[:8]) == 4  # fully cached, 8 tokens: vLLM recomputes the whole last block
    assert admit(cache, [0, 1, 2, 3, 9, 9, 9, 9, 4, 5, 6, 7, 0]) == 4  # diverges in block 2
    assert admit(cache, [7]) == 0


def test_vllm_eviction_keeps_a_finished_prompts_prefix_blocks_longest():
    cache = PrefixCache(block=4, capacity_tokens=12, eviction="vllm")
    # P takes all 3 blocks and frees them tail first: free queue p3 p2 p1 (head first).
    assert admit(cache, P) == 0
    # Q needs 2 blocks: pops p3 and p2 from the head; p1 stays.
    assert admit(cache, Q) == 0
    assert cache.evictions == 2
    # R starts with p1: a hit.
    assert admit(cache, R) == 4


def test_lru_eviction_drops_a_finished_prompts_prefix_blocks_first():
    cache = PrefixCache(block=4, capacity_tokens=12, eviction="lru")
    assert admit(cache, P) == 0  # LRU order p1 p2 p3
    assert admit(cache, Q) == 0  # q1 evicts p1, q2 evicts p2
    assert cache.evictions == 2
    assert admit(cache, R) == 0  # p1 is gone


def test_vllm_reuses_an_unhashed_partial_block_before_evicting_a_cached_one():
    cache = PrefixCache(block=4, capacity_tokens=12, eviction="vllm")
    assert admit(cache, Q) == 0  # blocks 0, 1 hold q1, q2; free queue: 2 q2 q1
    # 6 tokens: one full block + a partial one. Pops block 2 (empty) and q2's block; the partial
    # block is freed to the head, its full block (x1) to the tail: free queue: partial q1 x1.
    assert admit(cache, [1, 2, 3, 4, 5, 6]) == 0
    assert cache.evictions == 1
    # One block: takes the free partial block, evicting nothing.
    assert admit(cache, [7, 7, 7, 7]) == 0
    assert cache.evictions == 1
    assert admit(cache, Q) == 4  # q1 survived (8 tokens: the last block is recomputed)


def test_vllm_hit_blocks_move_to_the_tail_of_the_free_queue():
    cache = PrefixCache(block=4, capacity_tokens=12, eviction="vllm")
    admit(cache, P)  # free queue: p3 p2 p1
    # R hits p1 and pops p3 for its own block: free queue p2, then r2 p1 freed tail first.
    assert admit(cache, R) == 4
    # Q's two blocks pop p2 and r2; p1 survives again.
    admit(cache, Q)
    assert admit(cache, P) == 4  # p1 hits, p2 was evicted


def test_a_prompt_larger_than_the_cache_is_refused():
    with pytest.raises(ValueError, match="needs 4 blocks"):
        admit(PrefixCache(block=4, capacity_tokens=12, eviction="vllm"), list(range(13)))
    with pytest.raises(ValueError, match="eviction"):
        PrefixCache(eviction="fifo")


def test_block_chains_give_block_hashes_of_the_concatenated_pieces():
    import random

    from persona_icm.kv_cache import BlockChains

    rng = random.Random(0)
    pieces = [tuple(rng.randrange(50) for _ in range(rng.choice([0, 1, 3, 4, 5, 9]))) for _ in range(12)]
    chains = BlockChains(4)
    for _ in range(300):
        prompt = [rng.choice(pieces) for _ in range(rng.randrange(8))]
        if rng.random() < 0.2:
            prompt = [tuple(piece) for piece in prompt] + [tuple(rng.choice(pieces))]  # equal pieces, other objects
        ids = [t for piece in prompt for t in piece]
        hashes = block_hashes(ids, 4)
        assert chains.hashes(prompt) == (hashes, len(ids), tuple(ids[len(hashes) * 4 :]))


def random_prompts(count: int, block: int, seed: int = 0) -> list[list[int]]:
    """Prompts that share prefixes of varied length with earlier ones (branching anywhere, some
    lengths a multiple of the block, some the same prompt again): every path of the block pool."""
    import random

    rng = random.Random(seed)
    prompts: list[list[int]] = []
    for _ in range(count):
        base = rng.choice(prompts) if prompts and rng.random() < 0.8 else []
        if rng.random() < 0.15:
            prompts.append(list(base))
            continue
        keep = rng.randrange(len(base) + 1)
        length = keep + rng.randrange(1, 6 * block)
        prompts.append(base[:keep] + [rng.randrange(6) for _ in range(length - keep)])
    return prompts


@pytest.mark.parametrize("capacity", [40, 64, 160, 1024])
def test_the_block_pool_by_age_matches_the_reference_pool_prompt_by_prompt(capacity):
    fast, reference = (PrefixCache(block=4, capacity_tokens=capacity, eviction="vllm", reference=r) for r in (False, True))
    for ids in random_prompts(3000, 4):
        ids = ids[:capacity]  # no prompt larger than the cache
        hashes = block_hashes(ids, 4)
        assert fast.admit(hashes, len(ids)) == reference.admit(hashes, len(ids))
        assert (fast.evictions, fast.cached_blocks()) == (reference.evictions, reference.cached_blocks())
        assert fast._policy.holders == reference._policy.holders
    assert reference.evictions > 100
