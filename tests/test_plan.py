"""`persona-icm plan`: the searches' model work from the tokenizer alone, and the GPU-hours arithmetic."""

from __future__ import annotations

import json
import re

import pytest

from persona_icm import cli, cost
from persona_icm.config import IcmConfig
from persona_icm.prompts import PromptEncoder
from persona_icm.scoring.base import ScoreRequest
from persona_icm.tiny_model import build_tokenizer, make_claims
from tests.goqa_fixtures import make_rows, write_goqa

COUNTRIES = ["United States", "France"]


def test_gpu_hours_is_two_flops_per_parameter_and_token_at_the_stated_utilisation():
    tokens = 10**9
    expected = tokens * 2 * 8.03e9 / (0.4 * 989e12) / 3600
    assert cost.gpu_hours(tokens, cost.MODEL_PARAMETERS["8B"]) == pytest.approx(expected)
    assert 11.2 < expected < 11.4


def test_a_search_costs_no_more_than_its_prompts_and_a_bigger_cache_never_more():
    claims = make_claims(16)
    encoder = PromptEncoder(build_tokenizer(), "base")
    icm = IcmConfig(num_seed=4, iterations=20, initial_fix_rounds=3, loop_fix_rounds=2)
    result = cost.search_cost(claims, icm, encoder, capacities=(2048, 8192, None))
    small, large, unbounded = (result.prefilled[c] for c in (2048, 8192, None))
    assert result.prompts > 0 and result.calls > 0
    assert result.prompt_tokens >= small >= large >= unbounded >= result.prompts  # a prompt computes >= 1 token
    assert unbounded < result.prompt_tokens / 2  # leave-one-out prompts share long prefixes
    again = cost.search_cost(claims, icm, encoder, capacities=(2048, 8192, None))
    assert again == result  # deterministic


def test_plan_prints_each_country_and_the_total_without_loading_model_weights(tmp_path, capsys):
    from persona_icm.tiny_model import write_tiny_model

    model = write_tiny_model(tmp_path / "tiny-llama")
    for weights in model.glob("*.safetensors"):
        weights.unlink()  # the tokenizer and config stay: a model load would fail
    goqa = write_goqa(tmp_path / "goqa.csv", make_rows(24, 4, COUNTRIES))
    cli.main(["plan", "--preset", "smoke", "--goqa-path", str(goqa), "--set", f"base_model.name={model}",
              "--set", "icm.iterations=12", "--set", "icm.seeds=[0, 1]"])
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]
        if cells and cells[0] in (*COUNTRIES, "all") and len(cells) >= 8:
            rows.setdefault(cells[0], []).append([int(x) for x in cells[-6:]])
    assert set(rows) == {*COUNTRIES, "all"} and len(rows["France"]) == 2  # one row per (country, seed)
    per_search = [r for c in COUNTRIES for r in rows[c]]
    (total,) = rows["all"]
    assert total == [sum(col) for col in zip(*per_search, strict=True)]
    tokens, at_128k, at_512k, unbounded = total[2:]
    assert tokens >= at_128k >= at_512k >= unbounded > 0
    assert f"tokens counted with {model}" in out and "H100-hours, 70B" in out


def test_plan_of_a_study_prints_each_models_size_in_its_own_gpu_hours(tmp_path, capsys):
    from persona_icm.model_sizes import parameter_count
    from persona_icm.tiny_model import write_tiny_model

    models = [str(write_tiny_model(tmp_path / f"tiny-{d}", head_dim=d)) for d in (32, 64)]
    goqa = write_goqa(tmp_path / "goqa.csv", make_rows(24, 4, COUNTRIES))
    cli.main(["plan", "--preset", "smoke", "--goqa-path", str(goqa), "--set", "icm.iterations=6",
              "--set", "base_models=" + json.dumps([{"name": m} for m in models])])
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]
        if cells and cells[0] in {f"hf:{m}" for m in models}:
            rows[cells[0]] = cells
    assert set(rows) == {f"hf:{m}" for m in models}
    for model in models:
        cells = rows[f"hf:{model}"]
        parameters, _ = parameter_count(model)
        assert cells[2] == str(len(COUNTRIES))  # searches: one per country (one seed)
        unbounded, hours = int(cells[-2]), float(cells[-1])
        assert hours == pytest.approx(cost.gpu_hours(unbounded, parameters), abs=0.005)
    assert rows[f"hf:{models[0]}"][3:-6] == rows[f"hf:{models[1]}"][3:-6]  # same tokenizer, same searches' work
    assert "study of preset smoke" in out


def test_the_fast_path_gives_the_reference_paths_search_cost_for_every_field_and_capacity():
    """Block hashes from memoised pieces and the block pool kept by age against each prompt's whole
    token list hashed block by block and vLLM's pool one block at a time: the same SearchCost.
    Block 4 and the tiny tokenizer (with BOS): prompts of up to ~220 blocks, many with a partial last
    block, through caches small enough to evict."""
    encoder = PromptEncoder(build_tokenizer(add_bos=True), "base")
    icm = IcmConfig(num_seed=4, iterations=25, initial_fix_rounds=3, loop_fix_rounds=2)
    capacities = (1024, 2048, None)
    for country in ("France", "Japan", "Brazil"):
        claims = make_claims(24, country)
        fast, reference = (cost.search_cost(claims, icm, encoder, capacities, block=4, reference=r) for r in (False, True))
        assert fast == reference
        assert reference.prefilled[1024] > reference.prefilled[2048] > reference.prefilled[None]  # evictions mattered
    longest = ScoreRequest(tuple((c, c.gold) for c in claims[1:]), claims[0])
    assert len(encoder.encode(longest)) > 200 * 4
    assert any(len(encoder.encode(ScoreRequest(((c, 1),), c))) % 4 for c in claims)  # partial last blocks
