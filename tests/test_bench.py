"""The benchmark's own machinery: the simulated prefix cache."""

from benchmarks.bench import PrefixCache, block_hashes


def admit(cache, ids):
    return cache.admit(block_hashes(ids, cache.block), len(ids))


def test_prefix_cache_counts_leading_full_blocks_and_evicts_lru():
    cache = PrefixCache(block=4, capacity_tokens=12)  # 3 blocks
    a = list(range(10))  # 2 full blocks + 2 tail tokens
    assert admit(cache, a) == 0
    assert admit(cache, a) == 8  # both full blocks hit, tail recomputed
    assert admit(cache, a[:8]) == 7  # fully cached: the last token is still computed
    assert admit(cache, [0, 1, 2, 3, 9, 9, 9, 9, 4, 5, 6, 7]) == 4  # diverges in block 2; block 3 follows a miss
    # capacity 3 blocks: the last prompt added 2 new blocks, evicting a's second block (LRU)
    assert admit(cache, a) == 4


def test_unbounded_cache_counts_distinct_blocks():
    cache = PrefixCache(block=2, capacity_tokens=None)
    assert admit(cache, [1, 2, 3, 4, 5]) == 0
    assert admit(cache, [1, 2, 3, 9, 5]) == 2


def test_trie_bound_counts_each_distinct_prefix_once():
    from benchmarks.bench_scoring import trie_tokens

    assert trie_tokens([[1, 2, 3], [1, 2, 4], [1, 5], [1, 2, 3]]) == 5  # 1-2-3, then 4, then 5
    assert trie_tokens([[7, 8], [7, 8, 9]]) == 3
    assert trie_tokens([]) == 0
