"""Which model settings change a score, and the identity of a scorer made of them.

The ICM search's cache key and checkpoint name (tasks/search.py) hold the scorer's identity, not
its whole ModelSpec: a setting that changes only speed, memory, limits or how a server is reached
(a lower gpu_memory_utilization or tensor_parallel_size after an out-of-memory error) must find the
cached search and resume its checkpoint. Every ModelSpec field is in exactly one of the two tables
below; a field in neither makes `scorer_identity` raise (and tests/test_search_key.py fail), so a
new field is classified before it can fall out of the key.

"Speed only" settings change how the arithmetic is grouped (batch shape, tensor-parallel split,
graph capture, prefix-cache hits), not the model or its precision: a score can move by rounding,
as it can with the other prompts of a batch (docs/method.md, "Exactness and determinism"). Limits
(max_prompt_tokens, max_model_len, top_logprobs) refuse a prompt or a reply; they never change a
score that was computed.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from persona_icm.config import ModelSpec

# In the key: the model, its weights' and KV cache's precision, the prompt's tokens, the server.
SCORE_FIELDS: frozenset[str] = frozenset({
    "backend",
    "name",                    # hub id or local folder (ModelSpec has no revision field)
    "dtype",
    "head_dtype",              # the LM head's precision (float32 or the weights')
    "device",                  # hf: cpu or a GPU, and what dtype "auto" resolves to
    "prompts.style",
    "prompts.chat_template",   # by its file's contents
    "vllm.kv_cache_dtype",
    "vllm.quantization",
    "openai.base_url",
    "openai.model",
    "openai.mode",             # text prompts tokenised by the server, or token ids from `tokenizer`
    "openai.tokenizer",
})

# Out of the key: speed, memory, limits, retries, credentials.
SPEED_ONLY_FIELDS: frozenset[str] = frozenset({
    "batch_size",
    "prefix_reuse",
    "kv_budget_gb",
    "max_prompt_tokens",       # refuses a longer prompt, never truncates one
    "vllm.tensor_parallel_size",
    "vllm.gpu_memory_utilization",
    "vllm.max_model_len",      # the engine's window: refuses, never truncates
    "vllm.max_num_batched_tokens",
    "vllm.max_num_seqs",
    "vllm.enable_prefix_caching",
    "vllm.enforce_eager",
    "vllm.block_size",
    "vllm.num_gpu_blocks_override",
    "vllm.seed",               # seeds sampling; scores are raw log-probs of one greedy step
    "openai.api_key_env",
    "openai.api_key_secret",
    "openai.top_logprobs",     # a candidate outside the top k raises, it is never guessed
    "openai.timeout_seconds",
    "openai.max_attempts",
    "openai.backoff_seconds",
    "openai.max_concurrency",
})

IDENTITY_VERSION = 2  # 1: the whole ModelSpec (to 2026-12-07); 2: SCORE_FIELDS only


def field_paths(model: type[BaseModel] = ModelSpec, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf field of `model` (sections such as `vllm` are walked into)."""
    paths = []
    for name, info in model.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            paths += field_paths(kind, f"{prefix}{name}.")
        else:
            paths.append(prefix + name)
    return paths


@functools.cache
def unclassified_fields(model: type[BaseModel] = ModelSpec) -> list[str]:
    """Fields of `model` in neither table, or in both (for ModelSpec: none)."""
    return sorted({p for p in field_paths(model) if (p in SCORE_FIELDS) == (p in SPEED_ONLY_FIELDS)})


def score_settings(spec: ModelSpec) -> dict[str, Any]:
    """{field path: value} of the settings that can change a score, as configured (a chat template by its path)."""
    values = spec.model_dump(mode="json")
    settings: dict[str, Any] = {}
    for path in sorted(SCORE_FIELDS):
        value: Any = values
        for part in path.split("."):
            value = value[part]
        settings[path] = value
    return settings


def scorer_identity(spec: ModelSpec) -> dict[str, Any]:
    """{field path: value} of the settings that can change a score (a chat template by its
    contents), with the identity's version. Two specs with equal identities score alike."""
    missing = unclassified_fields()
    if missing:
        raise RuntimeError(
            f"ModelSpec field(s) {missing} are classified neither as score-changing nor as speed-only "
            "(or as both); add each to one table of persona_icm/scorer_identity.py"
        )
    identity: dict[str, Any] = {"identity_version": IDENTITY_VERSION, **score_settings(spec)}
    template = spec.prompts.chat_template
    if template is not None:
        identity["prompts.chat_template"] = "sha256:" + file_sha256(template)
    return identity


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
