"""The scoring backends: one record each, the one place that says what a backend is.

A record names the backend (`ModelSpec.backend`) and says how to build its scorer, how preflight
finds the longest prompt it accepts, which of its errors waiting cannot fix, and whether it runs
in this process. Functions and error classes are given as "module:attribute" strings and imported
on first use, so this module (and `config`, which validates names against it) imports no model
library: torch, transformers and vLLM load only when a model does. A record may also hold the
objects themselves (a test registering a backend).

To add a backend: write its module under `persona_icm/scoring/` (a factory
`(ModelSpec, api_key) -> ClaimScorer`, and where it has them a prompt-window rule, a host check
and its errors), then add its record to `BUILTIN` below (or call `register` before building the
config, as a plugin would).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Ref = str | Callable[..., Any] | type


@dataclass(frozen=True)
class Backend:
    """What the rest of the project knows about one scoring backend."""

    name: str
    factory: Ref  # (spec: ModelSpec, api_key: str | None) -> ClaimScorer
    # True: the model lives in this process (built on the main thread, holds host or GPU memory,
    # freed by scoring.release_local_models; preflight finds it in a local folder or the HF cache
    # and measures prompts with its tokenizer). False: a server asked over the network (preflight
    # probes it once; it may take an API key).
    in_process: bool
    # (spec, model folder) -> the longest prompt in tokens the backend accepts, or None when unknown
    # before a run; None: no rule (a remote server's window is not known here).
    prompt_window: Ref | None = None
    # (spec) -> what this process lacks to run the model (one line), or None when it has it.
    host_problem: Ref | None = None
    # Errors waiting cannot fix (the tasks' retry rule does not retry them; preflight's probe
    # reports them as bad input).
    non_retryable: tuple[Ref, ...] = ()
    # Errors of a server that may come back (retried by tasks; preflight's probe reports them).
    unavailable: tuple[Ref, ...] = ()

    def build(self, spec: Any, api_key: str | None = None) -> Any:
        return load(self.factory)(spec, api_key)

    def window(self, spec: Any, folder: str) -> int | None:
        return None if self.prompt_window is None else load(self.prompt_window)(spec, folder)

    def problem_on_this_host(self, spec: Any) -> str | None:
        return None if self.host_problem is None else load(self.host_problem)(spec)

    def errors(self, which: str = "non_retryable") -> tuple[type[BaseException], ...]:
        return tuple(load(ref) for ref in getattr(self, which))


def load(ref: Ref) -> Any:
    """The object a "module:attribute" string names (imported now), or `ref` itself."""
    if not isinstance(ref, str):
        return ref
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


_OPENAI = "persona_icm.scoring.openai"
BUILTIN: tuple[Backend, ...] = (
    Backend(
        "hf",
        factory="persona_icm.scoring.hf:scorer_from_spec",
        in_process=True,
        prompt_window="persona_icm.scoring.models:model_window",
    ),
    Backend(
        "vllm",
        factory="persona_icm.scoring.vllm:scorer_from_spec",
        in_process=True,
        prompt_window="persona_icm.scoring.vllm:engine_window",
        host_problem="persona_icm.scoring.vllm:host_problem",
    ),
    Backend(
        "openai",
        factory=f"{_OPENAI}:scorer_from_spec",
        in_process=False,
        non_retryable=tuple(f"{_OPENAI}:{name}" for name in ("NoLogprobsError", "CandidateNotReturned", "ModelNotServed", "EndpointError")),
        unavailable=(f"{_OPENAI}:EndpointUnavailable",),
    ),
    # Not a model: scores from each claim's gold label plus seeded noise (persona_icm/scoring/synthetic.py),
    # for running a study's orchestration at full size with no model or GPU. Nothing to load, so preflight
    # probes it as it would a server.
    Backend("synthetic", factory="persona_icm.scoring.synthetic:scorer_from_spec", in_process=False),
)

_REGISTRY: dict[str, Backend] = {b.name: b for b in BUILTIN}


def register(backend: Backend) -> Backend:
    """Add a backend; its name must be new."""
    if backend.name in _REGISTRY:
        raise ValueError(f"scoring backend {backend.name!r} is registered already")
    _REGISTRY[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> Backend:
    """The record of backend `name`; ValueError listing the registered names when there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown scoring backend {name!r}; registered backends: {', '.join(names())}") from None


def in_process(name: str) -> bool:
    """Whether backend `name` holds its model in this process (an unregistered name: False)."""
    backend = _REGISTRY.get(name)
    return backend is not None and backend.in_process


def non_retryable_errors() -> tuple[type[BaseException], ...]:
    """The errors every registered backend says waiting cannot fix."""
    return tuple(error for backend in _REGISTRY.values() for error in backend.errors())
