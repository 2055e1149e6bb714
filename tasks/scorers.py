"""The per-process scorer of a task, and the one place a task reads an API key from Prefect."""

from __future__ import annotations

import os
import time

from prefect import get_run_logger

from persona_icm import backends
from persona_icm.config import ModelSpec
from persona_icm.scoring import is_loaded, make_scorer
from persona_icm.scoring.base import ClaimScorer

GPU = "gpu"  # tag of every task that runs a model
ENGINE_START = "engine start"  # the log line of every in-process model load (counted by tests/test_rehearsal.py)


def model_name(spec: ModelSpec | None) -> str | None:
    return None if spec is None else f"{spec.backend}:{spec.name}"


def scorer_for(spec: ModelSpec) -> ClaimScorer:
    """The one scorer (engine) of this process for `spec`: make_scorer builds it on first use.
    A remote spec naming a Prefect Secret block gets its API key from that block. Building an
    in-process model (a vLLM engine: minutes at 70B) logs one line on the task's flow run."""
    if is_loaded(spec) or not backends.in_process(spec.backend):
        return make_scorer(spec, api_key=api_key_from_secret(spec))
    start = time.perf_counter()
    scorer = make_scorer(spec)
    get_run_logger().info("%s: %s loaded in %.0f s (process %d)", ENGINE_START, model_name(spec), time.perf_counter() - start, os.getpid())
    return scorer


def api_key_from_secret(spec: ModelSpec) -> str | None:
    """The value of the spec's Prefect Secret block (`openai.api_key_secret`) for a remote backend,
    else None (the library then reads the environment variable: scoring.openai.resolve_api_key)."""
    if backends.get(spec.backend).in_process or not spec.openai.api_key_secret:
        return None
    from prefect.blocks.system import Secret

    try:
        return Secret.load(spec.openai.api_key_secret).get()
    except ValueError as error:  # no such block
        raise ValueError(f"Prefect Secret block {spec.openai.api_key_secret!r} (openai.api_key_secret): {error}") from None
