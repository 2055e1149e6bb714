"""The one protocol through which the search and the evaluation talk to a language model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import polars as pl

from persona_icm.types import CallRecord as CallRecord
from persona_icm.types import PromptKind as PromptKind
from persona_icm.types import ScoreRequest as ScoreRequest


@runtime_checkable
class ClaimScorer(Protocol):
    """s = log P(" True") - log P(" False") at the next token, exactly, for each request."""

    calls: list[CallRecord]

    def score(self, requests: list[ScoreRequest]) -> list[float]: ...


@dataclass
class CallLog:
    """What every backend shares: its call records, and one PromptEncoder per prompt kind
    (built on first use from `self.tokenizer`).

    `record` is the one place a CallRecord is made (every backend, the synthetic stand-in and the
    simulated backend call it; tests/test_call_accounting.py checks that nothing else does)."""

    calls: list[CallRecord] = field(default_factory=list)
    phase: str = ""
    prompts: Any = None  # the ModelSpec's PromptConfig (make_scorer sets it); None: the default layout
    _encoders: dict = field(default_factory=dict, repr=False)

    @property
    def prompts_per_call(self) -> int:
        """How many prompts one score() call may carry for the backend to run them together; the
        evaluation packs whole prompt sets up to it. 1 here: one prompt set per call."""
        return 1

    def record(self, n_prompts: int, prompt_tokens: int, cached_tokens: int | None, wall: float) -> None:
        self.calls.append(CallRecord(n_prompts, prompt_tokens, cached_tokens, wall, self.phase))

    def encoder(self, kind: PromptKind):
        """The PromptEncoder of `kind` in this scorer's layout (`self.prompts`, a PromptConfig)."""
        from persona_icm.prompts import PromptEncoder

        if kind not in self._encoders:
            style, template = self.prompt_layout()
            self._encoders[kind] = PromptEncoder(self.tokenizer, kind, style=style, chat_template=template)
        return self._encoders[kind]

    def prompt_layout(self) -> tuple[str, str | None]:
        """(base prompt style, chat instruction template text) of this scorer."""
        from persona_icm.prompts import read_chat_template

        if self.prompts is None:
            return "fork", None
        template = self.prompts.chat_template
        return self.prompts.style, read_chat_template(template) if template else None


def prompts_per_call(scorer: ClaimScorer) -> int:
    """The scorer's `prompts_per_call` (CallLog and the backends), 1 for a scorer without one."""
    return max(1, int(getattr(scorer, "prompts_per_call", 1)))


@dataclass(frozen=True, slots=True)
class CallTotals:
    """What a list of CallRecords adds up to."""

    calls: int
    prompts: int
    prompt_tokens: int
    cached_tokens: int | None  # None when any call did not report it


def call_totals(calls: list[CallRecord]) -> CallTotals:
    """The one sum over call records (the ICM trace, `persona-icm plan` and the benchmarks use it)."""
    return CallTotals(
        calls=len(calls),
        prompts=sum(c.n_prompts for c in calls),
        prompt_tokens=sum(c.prompt_tokens for c in calls),
        cached_tokens=sum_or_none([c.cached_tokens for c in calls]),
    )


def sum_or_none(values: list[int | None]) -> int | None:
    """The total, or None when any part is unknown (a backend that does not report cached tokens)."""
    return None if any(v is None for v in values) else sum(values)


def prompt_limit(configured: int | None, model_limit: int | None) -> int | None:
    """The longest prompt a backend accepts: the smaller of max_prompt_tokens and the model's window."""
    known = [x for x in (configured, model_limit) if x]
    return min(known) if known else None


def check_lengths(prompts: list[list[int]], requests: list[ScoreRequest], limit: int | None, what: str) -> None:
    """Refuse a prompt longer than `limit` tokens, naming its query and where the limit comes from."""
    if limit is None:
        return
    for ids, r in zip(prompts, requests, strict=True):
        if len(ids) > limit:
            raise ValueError(
                f"prompt for query {r.query.claim_id} with {len(r.context)} demos has {len(ids)} tokens, more than {limit} ({what})"
            )


def resolve_dtype(dtype: str, on_gpu: bool) -> str:
    """ModelSpec.dtype "auto": bfloat16 on a GPU, float32 on a CPU (the same for every local backend)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if on_gpu else "float32"


CALLS_SCHEMA = {
    "model": pl.String, "call_index": pl.Int64, "phase": pl.String, "n_prompts": pl.Int64,
    "prompt_tokens": pl.Int64, "cached_tokens": pl.Int64, "wall_seconds": pl.Float64,
}


def calls_frame(calls: list[CallRecord], model: str | None) -> pl.DataFrame:
    """CallRecords as model_calls rows, numbered (the writer adds run_id, country, step)."""
    schema = {k: v for k, v in CALLS_SCHEMA.items() if k != "call_index"}
    rows = [(model, c.phase, c.n_prompts, c.prompt_tokens, c.cached_tokens, c.wall_seconds) for c in calls]
    return number_calls(pl.DataFrame(rows, schema=schema, orient="row"))


def number_calls(frame: pl.DataFrame) -> pl.DataFrame:
    """model_calls rows with call_index = their position in `frame`: the one place it is assigned
    (a step that concatenates several scorers' calls numbers the concatenation)."""
    return frame.with_columns(call_index=pl.int_range(pl.len(), dtype=pl.Int64)).select(list(CALLS_SCHEMA))


@contextmanager
def record_calls(scorer: ClaimScorer | None, phase: str | None = None) -> Iterator[list[CallRecord]]:
    """The CallRecords `scorer` makes inside the block, in a list filled when the block ends.

    `phase` tags them (on backends built on CallLog); the scorer's previous phase is restored
    afterwards. A None scorer records nothing."""
    calls: list[CallRecord] = []
    if scorer is None:
        yield calls
        return
    mark = len(scorer.calls)
    previous = getattr(scorer, "phase", None)
    tag = phase is not None and previous is not None
    if tag:
        scorer.phase = phase
    try:
        yield calls
    finally:
        if tag:
            scorer.phase = previous
        calls.extend(scorer.calls[mark:])


class ProcessedLogprobs(RuntimeError):
    """A backend returned processed (post-restriction) log-probs instead of raw ones."""


def check_raw_pair(logprob_true: float, logprob_false: float, source: str) -> None:
    """Both candidates at exactly 0.0 cannot both be raw log-probs (their probabilities would sum
    to 2): the backend reported processed log-probs of a restricted vocabulary."""
    if logprob_true == 0.0 and logprob_false == 0.0:
        raise ProcessedLogprobs(
            f"{source}: both candidates came back with log-prob exactly 0.0, so the server reports processed "
            "log-probs, not raw ones; start vLLM with --logprobs-mode raw_logprobs (its default)"
        )
