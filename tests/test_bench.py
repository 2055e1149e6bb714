"""The benchmarks' own machinery (the simulated prefix cache is tested in test_kv_cache.py)."""


def test_trie_bound_counts_each_distinct_prefix_once():
    from benchmarks.bench_scoring import trie_tokens

    assert trie_tokens([[1, 2, 3], [1, 2, 4], [1, 5], [1, 2, 3]]) == 5  # 1-2-3, then 4, then 5
    assert trie_tokens([[7, 8], [7, 8, 9]]) == 3
    assert trie_tokens([]) == 0
