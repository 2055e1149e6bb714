"""The benchmark's own machinery: the simulated prefix cache and the bench-local GOQA reader."""

from persona_icm.bench import PrefixCache, block_hashes, goqa_claims


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


def test_goqa_reader_builds_one_true_one_false_per_question(tmp_path):
    csv = tmp_path / "goqa.csv"
    csv.write_text(
        "question,selections,options,source\n"
        "\"Q one?\",\"defaultdict(<class 'list'>, {'Aland': [0.2, 0.5, 0.3], 'Bland': [0.6, 0.4, 0.0]})\","
        "\"['a', 'b', 'c']\",GAS\n"
        "\"Q two?\",\"defaultdict(<class 'list'>, {'Aland': [0.5, 0.5]})\",\"['yes', 'no']\",GAS\n"
        "\"Q three?\",\"defaultdict(<class 'list'>, {'Bland': [0.1, 0.9]})\",\"['x', 'y']\",GAS\n"
    )
    claims = goqa_claims(csv, "Aland", max_claims=10)
    assert len(claims) == 4 and [c.claim_id for c in claims] == sorted(c.claim_id for c in claims)
    by_question = {}
    for c in claims:
        by_question.setdefault(c.question, []).append(c)
    assert sorted(by_question) == ["Q one?", "Q two?"]
    assert [c.option for c in by_question["Q one?"] if c.gold] == ["b"]
    assert [c.option for c in by_question["Q two?"] if c.gold] == ["yes"]  # tie: lowest index
    assert all(sum(c.gold for c in g) == 1 and len(g) == 2 for g in by_question.values())
