"""The search's cache key and checkpoint name hold the model settings that change a score, and only
those (persona_icm/scorer_identity.py): a speed-only change after an out-of-memory error finds the
cached search and resumes its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from polars.testing import assert_frame_equal

from persona_icm.config import IcmConfig, ModelSpec
from persona_icm.icm import TRAJECTORY_COLUMNS
from persona_icm.scorer_identity import (
    SCORE_FIELDS,
    SPEED_ONLY_FIELDS,
    field_paths,
    scorer_identity,
    unclassified_fields,
)
from persona_icm.tiny_model import make_claims

# A valid value other than the default, for every ModelSpec field (a new field needs one here too).
OTHER_VALUE = {
    "backend": "vllm",
    "name": "gemma-3-270m",
    "dtype": "bfloat16",
    "head_dtype": "model",
    "device": "cpu",
    "prompts.style": "database",
    "prompts.chat_template": "TEMPLATE",  # a file the test writes
    "vllm.kv_cache_dtype": "fp8",
    "vllm.quantization": "fp8",
    "openai.base_url": "http://127.0.0.1:8000/v1",
    "openai.model": "served-name",
    "openai.mode": "allowed_token_ids",
    "openai.tokenizer": "smollm2-135m-instruct",
    "batch_size": 1,
    "prefix_reuse": False,
    "kv_budget_gb": 0.5,
    "max_prompt_tokens": 100_000,
    "vllm.tensor_parallel_size": 2,
    "vllm.gpu_memory_utilization": 0.5,
    "vllm.max_model_len": 4096,
    "vllm.max_num_batched_tokens": 2048,
    "vllm.max_num_seqs": 64,
    "vllm.enable_prefix_caching": False,
    "vllm.enforce_eager": True,
    "vllm.block_size": 32,
    "vllm.num_gpu_blocks_override": 1000,
    "vllm.seed": 1,
    "openai.api_key_env": "OTHER_API_KEY",
    "openai.api_key_secret": "other-secret-block",
    "openai.top_logprobs": 5,
    "openai.timeout_seconds": 5.0,
    "openai.max_attempts": 2,
    "openai.backoff_seconds": 0.0,
    "openai.max_concurrency": 2,
}


def changed(spec: ModelSpec, paths, template: Path | None = None) -> ModelSpec:
    """`spec` with every field of `paths` set to its OTHER_VALUE."""
    values = spec.model_dump()
    for path in paths:
        *sections, leaf = path.split(".")
        target = values
        for section in sections:
            target = target[section]
        target[leaf] = str(template) if OTHER_VALUE[path] == "TEMPLATE" else OTHER_VALUE[path]
    return ModelSpec.model_validate(values)


def key(spec: ModelSpec) -> str:
    from tasks.search import search_key

    return search_key(make_claims(10), IcmConfig(), spec)


def test_every_model_setting_is_classified_once_and_has_a_test_value():
    assert unclassified_fields() == []
    assert SCORE_FIELDS | SPEED_ONLY_FIELDS == set(field_paths())
    assert set(OTHER_VALUE) == set(field_paths())


def test_a_new_unclassified_field_is_caught_and_refused_as_a_key():
    """A later field cannot fall out of the key unnoticed."""

    class WithNewSetting(ModelSpec):
        attention_backend: str = "flash"

    assert unclassified_fields(WithNewSetting) == ["attention_backend"]
    assert "vllm.seed" in field_paths() and "vllm" not in field_paths()


@pytest.mark.parametrize("path", sorted(SPEED_ONLY_FIELDS))
def test_a_speed_only_setting_leaves_the_key_unchanged(path):
    base = ModelSpec()
    other = changed(base, [path])
    assert other != base
    assert key(other) == key(base)


@pytest.mark.parametrize("path", sorted(SCORE_FIELDS))
def test_a_score_setting_changes_the_key(path, tmp_path):
    template = tmp_path / "chat.txt"
    template.write_text("Country {country}. {question} Answer: {opinion}")
    base = ModelSpec()
    other = changed(base, [path], template)
    assert key(other) != key(base)


def test_a_chat_template_enters_the_key_by_its_contents(tmp_path):
    template = tmp_path / "chat.txt"
    template.write_text("In {country}: {question} {opinion}")
    spec = ModelSpec(prompts={"chat_template": template})
    first = key(spec)
    template.write_text("People in {country}: {question} {opinion}")
    assert key(spec) != first
    assert scorer_identity(spec)["prompts.chat_template"].startswith("sha256:")


@pytest.mark.slow
def test_a_speed_only_change_resumes_the_checkpoint_then_finds_the_cached_search(harness, tmp_path, monkeypatch):
    """The real icm-search task (tiny random Llama, hf): interrupted with one spec, run again with every
    speed-only setting changed: it resumes the first one's checkpoint and ends with the labels of an
    uninterrupted search; a third run with the first spec is a cache hit."""
    import json

    from prefect import flow

    from persona_icm.scoring import make_scorer
    from persona_icm.tiny_model import write_tiny_model
    from tasks.search import icm_search, search_key

    first = ModelSpec(backend="hf", name=str(write_tiny_model(tmp_path / "tiny-llama")))
    second = changed(first, SPEED_ONLY_FIELDS)
    icm = IcmConfig(num_seed=4, iterations=12, checkpoint_every=2)
    train = make_claims(10)
    checkpoints = tmp_path / "checkpoints"
    checkpoint = checkpoints / f"{search_key(train, icm, first)}.ckpt"
    search = icm_search.with_options(result_storage=tmp_path / "results", retries=0)

    # A fault after the checkpoint of iteration 4: the real scorer of the first spec raises.
    scorer = make_scorer(first)
    score = scorer.score

    def score_then_fail(requests):
        if checkpoint.exists() and json.loads(json.loads(checkpoint.read_text())["payload"])["iteration"] >= 4:
            raise RuntimeError("injected fault")
        return score(requests)

    monkeypatch.setattr(scorer, "score", score_then_fail)

    @flow(name="search-once")
    def search_once(spec, storage=None):
        task = search if storage is None else search.with_options(result_storage=storage)
        state = task(train, icm, spec, checkpoints if storage is None else tmp_path / "reference-ckpt", return_state=True)
        return state.name, state.result(raise_on_failure=False)

    state, error = search_once(first)
    assert state == "Failed" and "injected fault" in str(error)
    saved = json.loads(json.loads(checkpoint.read_text())["payload"])["iteration"]
    assert 4 <= saved < icm.iterations

    state, resumed = search_once(second)
    assert state == "Completed"
    assert resumed.counters["resumed_from"] == saved and resumed.run_key == checkpoint.stem

    monkeypatch.setattr(scorer, "score", score)
    state, cached = search_once(first)
    assert state == "Cached" and cached.run_key == resumed.run_key
    assert_frame_equal(cached.labels, resumed.labels)

    state, uninterrupted = search_once(first, storage=tmp_path / "reference-results")
    assert state == "Completed" and uninterrupted.counters["resumed_from"] is None
    assert_frame_equal(resumed.labels, uninterrupted.labels)
    # the first spec batches 8 prompts with shared prefixes, the second one prompt at a time: floats
    # may differ in the last bits (docs/method.md, "Exactness and determinism"); decisions may not
    assert_frame_equal(resumed.trace.select(TRAJECTORY_COLUMNS), uninterrupted.trace.select(TRAJECTORY_COLUMNS),
                       check_exact=False, rel_tol=0, abs_tol=1e-5)
