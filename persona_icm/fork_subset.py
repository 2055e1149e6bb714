"""The persona-elicitation fork's question subset, shipped as package data (data/fork_subset.json).

180 Pew questions and 14 countries, as the fork's `data_transformation/transform_opinions.py` reads
them from its `data/global_opinion_data.csv` (provenance, sha256 and licence in the JSON; written by
scripts/derive_fork_subset.py). A GOQA row is one of them when its question, stripped and lower-cased,
equals one of these texts stripped and lower-cased.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files


@dataclass(frozen=True)
class ForkSubset:
    questions: tuple[str, ...]
    countries: tuple[str, ...]
    source: str
    source_sha256: str

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(fork_question_key(q) for q in self.questions)


def fork_question_key(text: str) -> str:
    """The fork's matching key of a question text."""
    return text.strip().lower()


@cache
def fork_subset() -> ForkSubset:
    raw = json.loads((files("persona_icm") / "data" / "fork_subset.json").read_text(encoding="utf-8"))
    return ForkSubset(tuple(raw["questions"]), tuple(raw["countries"]), raw["source"], raw["source_sha256"])
