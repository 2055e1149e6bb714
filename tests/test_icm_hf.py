"""The ICM search on a real (tiny, random) transformers model: fast engine == reference engine.

The engines are exact for any scorer whose score of a prompt depends on that prompt alone. The
HF scorer with batch_size=1 and prefix_reuse=False is such a scorer (every prompt is one forward
pass of its own tokens, whatever else is in the call), so the traces must agree bit for bit.
Batched scoring reassociates floating point across batch shapes (~1e-7 here, ~1e-5 on large
models): then only the decisions are compared, with the numbers within float noise.
"""

import polars as pl
import pytest
import torch

from persona_icm.config import build_config
from persona_icm.icm import TRAJECTORY_COLUMNS, run_icm
from persona_icm.scoring.hf import HFScorer
from persona_icm.tiny_model import build_model, build_tokenizer, make_claims

DECISIONS = ["iteration", "claim_id", "previous_label", "proposal", "changed", "fixes", "accepted", "I", "pool_size", "accepted_total"]


@pytest.fixture(scope="module")
def tiny():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend on a shared CPU
    tokenizer = build_tokenizer(add_bos=True)
    yield build_model(len(tokenizer), head_dim=16), tokenizer
    torch.set_num_threads(threads)


def _search(tiny, engine: str, **scorer_kw):
    model, tokenizer = tiny
    scorer = HFScorer(model, tokenizer, progress=False, **scorer_kw)
    config = build_config("smoke", {"icm": {"iterations": 20, "num_seed": 4, "engine": engine}}).icm
    return run_icm(make_claims(16), scorer, config, show_progress=False), scorer


def test_fast_engine_gives_the_reference_trace_bit_for_bit_with_a_prompt_deterministic_hf_scorer(tiny):
    fast, fast_scorer = _search(tiny, "fast", batch_size=1, prefix_reuse=False)
    ref, ref_scorer = _search(tiny, "reference", batch_size=1, prefix_reuse=False)
    assert fast.trace.select(TRAJECTORY_COLUMNS).equals(ref.trace.select(TRAJECTORY_COLUMNS))
    assert fast.labels.equals(ref.labels)
    assert fast.counters.proposed >= 5 and fast.counters.fixes_applied + fast.counters.accepted > 0
    assert all(c.n_prompts == 1 for c in ref_scorer.calls)
    assert len(fast_scorer.calls) * 5 < len(ref_scorer.calls)
    assert sum(c.n_prompts for c in fast_scorer.calls) < len(ref_scorer.calls)  # the memo saved prompts


def test_batched_prefix_reusing_hf_scorer_takes_the_same_decisions_within_float_noise(tiny):
    fast, _ = _search(tiny, "fast")  # default scorer: batches of 8, shared-prefix KV reuse
    ref, _ = _search(tiny, "reference")
    assert fast.trace.select(DECISIONS).equals(ref.trace.select(DECISIONS))
    for column in ("U", "P", "score", "delta_U"):
        gap = (fast.trace[column] - ref.trace[column]).abs().max()
        assert gap is not None and gap < 1e-4, column
    assert fast.labels.select("claim_id", "label").equals(ref.labels.select("claim_id", "label"))
    assert fast.trace.filter(pl.col("changed"))["accepted"].sum() > 0
