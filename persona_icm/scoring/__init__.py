"""Scoring backends behind one protocol, and the per-process factory."""

from __future__ import annotations

import threading

from persona_icm import backends
from persona_icm.config import ModelSpec
from persona_icm.scoring.base import CallRecord, ClaimScorer, PromptKind, ScoreRequest

__all__ = ["CallRecord", "ClaimScorer", "PromptKind", "ScoreRequest", "make_scorer", "release_local_models"]

_SCORERS: dict[ModelSpec, ClaimScorer] = {}


def make_scorer(spec: ModelSpec, api_key: str | None = None) -> ClaimScorer:
    """The scorer for `spec`, built once per process and cached (ModelSpec is frozen, so hashable)
    by its backend's factory (persona_icm/backends.py).

    In-process models are built on the main thread (vLLM installs signal handlers there).
    Convention: one local model per process (a GPU worker serves one model); nothing here frees a
    model. `api_key` (a remote backend's) wins over the spec's environment variable; the flow
    passes the value of the spec's Prefect Secret block here.
    """
    cached = _SCORERS.get(spec)
    if cached is not None and not getattr(cached, "closed", False):
        return cached
    backend = backends.get(spec.backend)
    if backend.in_process and threading.current_thread() is not threading.main_thread():
        raise RuntimeError("make_scorer must build local models on the main thread")
    scorer = backend.build(spec, api_key)
    scorer.prompts = spec.prompts  # the layout its encoders build (scoring.base.CallLog.encoder)
    _SCORERS[spec] = scorer
    return scorer


def is_loaded(spec: ModelSpec) -> bool:
    """Whether this process holds a live scorer for `spec` (make_scorer would not build one)."""
    cached = _SCORERS.get(spec)
    return cached is not None and not getattr(cached, "closed", False)


def release_local_models() -> None:
    """Free every in-process model (hf, vllm) this process built (vLLM engines are shut down, so their GPU
    memory goes back), so that the next model can use the same devices. The chat baseline calls
    this when it runs in the process that held the base model."""
    import gc

    for spec, scorer in list(_SCORERS.items()):
        if backends.in_process(spec.backend):
            close = getattr(scorer, "close", None)
            if close is not None:
                close()
            del _SCORERS[spec]
    gc.collect()
    try:
        import torch

        if torch.cuda.is_initialized():  # is_available() would initialise CUDA, before a vLLM engine may fork
            torch.cuda.empty_cache()
    except ImportError:
        pass
