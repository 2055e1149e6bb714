"""Binary claims ("option X is the most popular answer to Q in country C") and per-country splits."""

from __future__ import annotations

from dataclasses import dataclass


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
