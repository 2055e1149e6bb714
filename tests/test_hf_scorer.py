"""Exactness of the transformers backend on a tiny random Llama (and a sliding-window Mistral)."""

import pytest
import torch

from benchmarks.bench_scoring import trie_tokens
from persona_icm.prompts import PromptEncoder
from persona_icm.scoring.base import ScoreRequest
from persona_icm.scoring.hf import HFScorer, trie_order, trie_walk
from persona_icm.tiny_model import build_model, build_tokenizer, make_claims
from tests.helpers import reference_scores


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(add_bos=True)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model(len(tokenizer), head_dim=16)


@pytest.fixture(scope="module")
def claims():
    return make_claims(20)


def leave_one_out(claims, n):
    labelled = [(c, c.gold) for c in claims[:n]]
    return [ScoreRequest(tuple(labelled[:i] + labelled[i + 1 :]), claims[i]) for i in range(n)]


def three_labellings(claims, n):
    """A consistency fix: leave-one-out of three labellings differing in the last two labels (one is gold again)."""
    gold = [c.gold for c in claims[:n]]
    out = []
    for labels in (gold, gold[:-2] + [1, 0], gold[:-2] + [0, 1]):
        labelled = list(zip(claims[:n], labels, strict=True))
        out += [ScoreRequest(tuple(labelled[:i] + labelled[i + 1 :]), claims[i]) for i in range(n)]
    return out


def mixed_requests(claims):
    """Different demo counts (0..), shared and unshared prefixes, duplicates, and chat prompts."""
    reqs = leave_one_out(claims, 7)
    reqs += [ScoreRequest(tuple((c, c.gold) for c in claims[:k]), claims[15 + k % 3]) for k in (0, 2, 9, 14)]
    reqs += [ScoreRequest(tuple((c, 1 - c.gold) for c in claims[3:6]), claims[19])]
    reqs += [reqs[2], ScoreRequest((), claims[4], "chat"), ScoreRequest((), claims[5], "chat")]
    return reqs


@pytest.mark.parametrize(
    "prefix_reuse,batch_size,kv_budget",
    [(False, 1, 2e9), (False, 4, 2e9), (True, 1, 2e9), (True, 3, 2e9), (True, 16, 2e9), (True, 16, 3e5)],
)
def test_hf_scores_equal_one_at_a_time_reference(model, tokenizer, claims, prefix_reuse, batch_size, kv_budget):
    requests = mixed_requests(claims)
    expected = reference_scores(model, tokenizer, requests)
    scorer = HFScorer(model, tokenizer, batch_size=batch_size, prefix_reuse=prefix_reuse, kv_budget_bytes=kv_budget)
    got = scorer.score(requests)
    assert got == pytest.approx(expected, abs=1e-5)
    assert max(expected) - min(expected) > 0.05  # the model distinguishes prompts: a real test
    call = scorer.calls[-1]
    assert call.n_prompts == len(requests) and call.wall_seconds > 0
    assert call.prompt_tokens == sum(len(PromptEncoder(tokenizer, r.kind).encode(r)) for r in requests)
    assert (call.cached_tokens > 0) == prefix_reuse


@pytest.mark.parametrize("batch_size,max_padding", [(1, 0.1), (4, 0.1), (8, float("inf"))])
@pytest.mark.parametrize("workload", ["leave_one_out", "three_labellings"])
def test_prefix_reuse_computes_exactly_the_prefix_trie(model, tokenizer, claims, workload, batch_size, max_padding):
    """Each distinct prefix once (the trie bound), whatever the batch shape, with exact scores.
    max_padding=inf puts suffixes forked at different depths into one batch. pass_tokens=0: every
    shared token is worth its own pass (the default trades a few; see the next test)."""
    requests = leave_one_out(claims, 14) if workload == "leave_one_out" else three_labellings(claims, 10)
    enc = PromptEncoder(tokenizer)
    bound = trie_tokens([enc.encode(r) for r in requests])
    scorer = HFScorer(model, tokenizer, batch_size=batch_size, max_padding=max_padding, pass_tokens=0, progress=False)
    assert scorer.score(requests) == pytest.approx(reference_scores(model, tokenizer, requests), abs=1e-5)
    call = scorer.calls[-1]
    computed = call.prompt_tokens - call.cached_tokens
    assert computed == bound < 0.6 * call.prompt_tokens
    padding = scorer.forward_tokens - computed
    if batch_size == 1:
        assert padding == 0
    elif max_padding == 0.1:
        assert 0 <= padding <= 0.1 * computed
    elif workload == "leave_one_out":
        assert padding > 0  # rows of different forks (and suffix lengths) shared a batch


@pytest.mark.parametrize("workload", ["leave_one_out", "three_labellings"])
def test_by_default_prefix_reuse_stays_within_ten_percent_of_the_trie(model, tokenizer, claims, workload):
    requests = leave_one_out(claims, 14) if workload == "leave_one_out" else three_labellings(claims, 10)
    bound = trie_tokens([PromptEncoder(tokenizer).encode(r) for r in requests])
    scorer = HFScorer(model, tokenizer, batch_size=4, progress=False)
    assert scorer.score(requests) == pytest.approx(reference_scores(model, tokenizer, requests), abs=1e-5)
    computed = scorer.calls[-1].prompt_tokens - scorer.calls[-1].cached_tokens
    assert bound <= computed <= 1.1 * bound


def test_shared_context_scores_each_query_on_one_prefill(model, tokenizer, claims):
    context = tuple((c, c.gold) for c in claims[:12])
    requests = [ScoreRequest(context, q) for q in claims[12:20]]
    scorer = HFScorer(model, tokenizer, batch_size=8)
    assert scorer.score(requests) == pytest.approx(reference_scores(model, tokenizer, requests), abs=1e-5)
    enc = PromptEncoder(tokenizer)
    lengths = [len(enc.encode(r)) for r in requests]
    shared = sum(len(p) for p in enc.pieces(requests[0])[:-1])
    assert scorer.calls[-1].cached_tokens >= shared * (len(requests) - 1) - len(requests)
    assert scorer.calls[-1].prompt_tokens == sum(lengths)


def _sliding_window_models(vocab: int):
    """Mistral with a 24-token window on every layer, and Gemma-3 text (sliding and full layers)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, MistralConfig, MistralForCausalLM

    torch.manual_seed(1)
    yield MistralForCausalLM(MistralConfig(
        vocab_size=vocab, hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        intermediate_size=64, num_hidden_layers=2, sliding_window=24, max_position_embeddings=4096,
    ))
    yield Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=vocab, hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        intermediate_size=64, num_hidden_layers=3, sliding_window=24, max_position_embeddings=4096,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    ))


def test_sliding_window_models_reuse_prefixes_with_exact_scores(tokenizer, claims):
    """Prompts longer than the window: a full cache (cropped along the trie walk, forked at
    different depths into one batch) with the model's sliding masks gives the
    one-prompt-at-a-time scores."""
    requests = leave_one_out(claims, 5) + [ScoreRequest(tuple((c, c.gold) for c in claims[:3]), claims[9])]
    for model in _sliding_window_models(len(tokenizer)):
        model.eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0.0, 0.08)
        expected = reference_scores(model, tokenizer, requests)
        for batch_size in (1, 4):
            scorer = HFScorer(model, tokenizer, batch_size=batch_size, max_padding=float("inf"), progress=False)
            assert scorer.reusable
            assert scorer.score(requests) == pytest.approx(expected, abs=1e-5), type(model).__name__
            assert scorer.calls[-1].cached_tokens > 0


def test_trie_order_visits_leave_one_out_in_index_order():
    rows = [("r", i) for i in range(6)]
    keys = [tuple(["h"] + rows[:i] + rows[i + 1 :] + [("q", i)]) for i in range(6)]
    assert trie_order(keys) == list(range(6))
    shuffled = [keys[i] for i in (3, 0, 5, 1, 4, 2)]
    # the last two are both single leaves at the same branch: ties keep input order (5 before 4)
    assert [(3, 0, 5, 1, 4, 2)[i] for i in trie_order(shuffled)] == [0, 1, 2, 3, 5, 4]
    assert sorted(trie_order([(), (1,), (1, 2), (1,), (2,)])) == [0, 1, 2, 3, 4]


def test_too_long_prompt_is_a_clear_error(model, tokenizer, claims):
    scorer = HFScorer(model, tokenizer, max_prompt_tokens=50)
    with pytest.raises(ValueError, match="max_prompt_tokens=50"):
        scorer.score([ScoreRequest(tuple((c, 1) for c in claims[:3]), claims[5])])


def walk_cost(groups, prompts):
    """Tokens the scorer computes along a trie_walk plan: each group's new path tokens, then its suffixes."""
    from persona_icm.scoring.hf import common_prefix_length

    cost, cached = 0, []
    for path, leaves in groups:
        cost += len(path) - common_prefix_length(cached, path) + sum(len(prompts[i]) - f for i, f in leaves)
        cached = path
    return cost


def test_trie_walk_puts_shared_prefixes_on_the_base_path_and_forks_each_prompt_after_them():
    header, rows = [0] * 4, [[10 + i] * 3 for i in range(5)]

    def loo(label):
        return [header + [t for j, r in enumerate(rows) if j != i for t in r] + [90 + label, 99, i] for i in range(5)]

    # leave-one-out: one group; prompt i forks after the header and the rows before it
    prompts = loo(0)
    [(path, leaves)] = groups = trie_walk(list(range(5)), prompts)
    assert leaves == [(i, 4 + 3 * min(i, 3)) for i in range(5)]  # the last two share the rows before row 3
    assert path == prompts[4][:13]
    assert walk_cost(groups, prompts) == trie_tokens(prompts)
    # two labellings in trie order: each pair shares all but its last 3 tokens, and the next pair
    # forks off higher up, cropping the path: a group ends there
    prompts = loo(0) + loo(1)
    order = [0, 5, 1, 6, 2, 7, 3, 8, 4, 9]
    groups = trie_walk(order, prompts)
    assert [leaves for _, leaves in groups] == [[(i, len(prompts[i]) - 3), (i + 5, len(prompts[i]) - 3)] for i in range(5)]
    assert walk_cost(groups, prompts) == trie_tokens(prompts)



def test_a_float32_head_leaves_float32_weights_alone_and_takes_bf16_logits_from_float32(model, tokenizer, tmp_path, claims):
    """ModelSpec.head_dtype: with float32 weights nothing changes (same scores, to the bit); with bf16 weights
    the logits are the bf16 hidden state times the head's weight in float32, not rounded to bf16."""
    from persona_icm.config import ModelSpec
    from persona_icm.scoring.hf import Float32Head, scorer_from_spec

    folder = str(tmp_path / "tiny")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    requests = leave_one_out(claims, 4)

    def scorer(dtype, head_dtype):
        return scorer_from_spec(ModelSpec(name=folder, dtype=dtype, device="cpu", head_dtype=head_dtype))

    fp32_head, fp32_model = scorer("float32", "float32"), scorer("float32", "model")
    assert isinstance(fp32_head.model.get_output_embeddings(), torch.nn.Linear)  # not replaced
    assert fp32_head.score(requests) == fp32_model.score(requests)

    bf16_head, bf16_model = scorer("bfloat16", "float32"), scorer("bfloat16", "model")
    head = bf16_head.model.get_output_embeddings()
    assert isinstance(head, Float32Head) and bf16_head.model.model.embed_tokens.weight.dtype == torch.bfloat16
    ids = torch.tensor([PromptEncoder(bf16_head.tokenizer).encode(requests[0])])
    with torch.inference_mode():
        hidden = bf16_head.model.model(input_ids=ids).last_hidden_state
        logits = bf16_head.model(input_ids=ids).logits
        rounded = bf16_model.model(input_ids=ids).logits
    weight = bf16_model.model.get_output_embeddings().weight
    assert logits.dtype == torch.float32 and rounded.dtype == torch.bfloat16
    torch.testing.assert_close(logits, hidden.float() @ weight.float().T, rtol=0, atol=1e-5)
    assert (logits - rounded.float()).abs().max() > 1e-3  # what rounding to bf16 costs even at this model's logits
    assert bf16_head.score(requests) != bf16_model.score(requests)
