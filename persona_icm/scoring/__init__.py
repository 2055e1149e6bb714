"""Scoring backends behind one protocol, and the per-process factory."""

from __future__ import annotations

import threading

from persona_icm.config import ModelSpec
from persona_icm.scoring.base import CallRecord, ClaimScorer, PromptKind, ScoreRequest

__all__ = ["CallRecord", "ClaimScorer", "PromptKind", "ScoreRequest", "make_scorer", "release_local_models"]

_SCORERS: dict[ModelSpec, ClaimScorer] = {}


def make_scorer(spec: ModelSpec, api_key: str | None = None) -> ClaimScorer:
    """The scorer for `spec`, built once per process and cached (ModelSpec is frozen, so hashable).

    Local models are built on the main thread (vLLM installs signal handlers there). Convention:
    one local model per process (a GPU worker serves one model); nothing here frees a model.
    `api_key` (openai backend) overrides the spec's environment variable; the flow passes the
    value of the spec's Prefect Secret block here.
    """
    cached = _SCORERS.get(spec)
    if cached is not None and not getattr(cached, "closed", False):
        return cached
    if spec.backend in ("hf", "vllm") and threading.current_thread() is not threading.main_thread():
        raise RuntimeError("make_scorer must build local models on the main thread")
    if spec.backend == "hf":
        from persona_icm.scoring.hf import load_hf_scorer

        scorer = load_hf_scorer(
            spec.name,
            dtype=spec.dtype,
            device=spec.device,
            batch_size=spec.batch_size,
            prefix_reuse=spec.prefix_reuse,
            kv_budget_bytes=spec.kv_budget_gb * 1e9,
            max_prompt_tokens=spec.max_prompt_tokens,
        )
    elif spec.backend == "vllm":
        from persona_icm.scoring.models import resolve
        from persona_icm.scoring.vllm import VllmScorer

        scorer = VllmScorer(
            resolve(spec.name), spec.vllm, dtype=spec.dtype, max_prompt_tokens=spec.max_prompt_tokens
        )
    elif spec.backend == "openai":
        scorer = _make_openai(spec, api_key)
    else:
        raise ValueError(f"unknown scoring backend {spec.backend!r}")
    scorer.prompts = spec.prompts  # the layout its encoders build (scoring.base.CallLog.encoder)
    _SCORERS[spec] = scorer
    return scorer


def _make_openai(spec: ModelSpec, api_key: str | None = None) -> ClaimScorer:
    from persona_icm.scoring.openai import OpenAIScorer

    api = spec.openai
    tokenizer = None
    if api.mode == "allowed_token_ids":
        from transformers import AutoTokenizer

        from persona_icm.scoring.models import resolve

        tokenizer = AutoTokenizer.from_pretrained(resolve(api.tokenizer or spec.name))
    return OpenAIScorer(
        base_url=api.base_url,
        model=api.model or spec.name,
        api_key_env=api.api_key_env,
        api_key=api_key,
        mode=api.mode,
        top_logprobs=api.top_logprobs,
        tokenizer=tokenizer,
        timeout_seconds=api.timeout_seconds,
        max_attempts=api.max_attempts,
        backoff_seconds=api.backoff_seconds,
        max_concurrency=api.max_concurrency,
    )



def release_local_models() -> None:
    """Free every hf/vllm model this process built (vLLM engines are shut down, so their GPU
    memory goes back), so that the next model can use the same devices. The chat baseline calls
    this when it runs in the process that held the base model."""
    import gc

    for spec, scorer in list(_SCORERS.items()):
        if spec.backend in ("hf", "vllm"):
            close = getattr(scorer, "close", None)
            if close is not None:
                close()
            del _SCORERS[spec]
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
