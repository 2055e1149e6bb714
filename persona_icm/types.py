"""The value types every layer shares: the ground floor of the library.

It imports nothing from persona_icm, so any module may import it without a loop
(tests/test_import_graph.py checks that the library has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PromptKind = Literal["base", "chat"]

# icm_seed of result rows that depend on no ICM run (zero-shot; golden when no ICM labels were
# given), so the column can be part of a primary key.
NO_ICM_SEED = -1


@dataclass(frozen=True, slots=True)
class Claim:
    """One claim: the unit the search labels and the scorer reads.

    `group_id` ties the two claims of one (question, country) together; exactly one of them is
    gold-True. `gold` is never read by the search itself, only by monitoring and evaluation.
    """

    claim_id: str
    group_id: str
    country: str
    question: str
    option: str
    gold: int


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """Score `query` given labelled demonstrations `context`, in that order.

    kind "base": the few-shot base prompt (zero-shot base = empty context).
    kind "chat": the zero-shot chat instruction through the chat template (context must be empty).
    """

    context: tuple[tuple[Claim, int], ...]
    query: Claim
    kind: PromptKind = "base"


@dataclass(frozen=True, slots=True)
class CallRecord:
    """Cost of one backend call (one `score` invocation)."""

    n_prompts: int
    prompt_tokens: int
    cached_tokens: int | None
    wall_seconds: float
    phase: str = ""


class DataError(ValueError):
    """The requested data cannot be built from this GOQA file; the message says why."""
