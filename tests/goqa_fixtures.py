"""Small GOQA-format CSV files written by the tests themselves (same format as the real file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from persona_icm.fork_subset import fork_subset

COUNTRIES = ["United States", "France", "Japan", "Germany"]
# Texts of the fork's question subset, so that the default data protocol ("fork") selects them.
FORK_QUESTIONS = fork_subset().questions


def selections_repr(shares: dict[str, list[float]]) -> str:
    return f"defaultdict(<class 'list'>, {shares!r})"


def write_goqa(path: Path, rows: list[dict]) -> Path:
    """rows: question, options (list), selections (dict country -> shares, or a raw string), source."""
    frame = pl.DataFrame(
        {
            "question": [r["question"] for r in rows],
            "selections": [
                r["selections"] if isinstance(r["selections"], str) else selections_repr(r["selections"])
                for r in rows
            ],
            "options": [r["options"] if isinstance(r["options"], str) else repr(r["options"]) for r in rows],
            "source": [r.get("source", "GAS") for r in rows],
        }
    )
    frame.write_csv(path)
    return path


def _shares(rng: np.random.Generator, n: int) -> list[float]:
    return [float(round(x, 3)) for x in rng.dirichlet(np.ones(n))]


def make_rows(n_binary: int = 12, n_multi: int = 8, countries: list[str] = COUNTRIES, seed: int = 0) -> list[dict]:
    """GAS questions (binary and multi-option with DK/Refused; texts of the fork's subset), asked in
    every country, plus the awkward cases of the real file (texts outside the fork's subset): a WVS
    row, float options, a multi-line question, a tie, an all-zero share list, an empty question row."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_binary):
        rows.append(
            {
                "question": FORK_QUESTIONS[i],
                "options": ["Agree", "Disagree"],
                "selections": {c: _shares(rng, 2) for c in countries},
            }
        )
    for i in range(n_multi):
        rows.append(
            {
                "question": FORK_QUESTIONS[120 + i],
                "options": ["A lot", "Some", "Not much", "DK/Refused"],
                "selections": {c: _shares(rng, 4) for c in countries},
            }
        )
    rows += [
        {
            "question": "Yes, no or don't know?",
            "options": ["Yes", "No", "DK/Refused"],
            "selections": {c: [0.2, 0.3, 0.5] for c in countries},  # DK is the top answer
        },
        {
            "question": "A tied question?",
            "options": ["First", "Second", "Third"],
            "selections": {c: [0.2, 0.4, 0.4] for c in countries},
        },
        {
            "question": "How important is God in your life?\n\nPlease use this scale.",
            "options": "['Not important at all', 1.0, 2.0, 3.5, 'Very important', \"Don't know\"]",
            "selections": {c: _shares(rng, 6) for c in countries},
            "source": "WVS",
        },
        {
            "question": "A question nobody answered?",
            "options": ["Yes", "No"],
            "selections": {countries[0]: [0.0, 0.0], **{c: [0.6, 0.4] for c in countries[1:]}},
        },
        {"question": "", "options": ["Yes", "No"], "selections": {countries[0]: [0.5, 0.5]}},
    ]
    return rows


FORK_CHAIN_COUNTRIES = ["United States", "France", "Japan", "Germany", "Brazil"]


def make_fork_chain_rows(seed: int = 21) -> list[dict]:
    """A GOQA file for pinning the fork's data chain (tests/fixtures/fork_chain_generated.json):
    binary and multi-option questions of the fork's subset with shares on a 0.05 grid (ties
    common), explicit ties, an all-zero share list, float options, a text in other case and
    spacing, a text repeated on a second row with other options, countries missing some
    questions, a country outside the fork's 14, selections in a different country order per row,
    questions outside the subset and a row without a question."""
    rng = np.random.default_rng(seed)
    countries = [*FORK_CHAIN_COUNTRIES, "Canada"]

    def shares(n: int) -> list[float]:
        cuts = np.sort(rng.integers(0, 21, size=n - 1))
        return [round(float(x) / 20, 2) for x in np.diff(np.concatenate([[0], cuts, [20]]))]

    def asked(k: int, n_options: int, drop: float = 0.2) -> dict[str, list[float]]:
        here = [c for c in countries if k % 7 == 0 or rng.random() > drop]
        return {c: shares(n_options) for c in rng.permutation(here).tolist()}

    rows: list[dict] = []
    for k in range(30):
        rows.append({"question": FORK_QUESTIONS[k], "options": ["Yes", "No"], "selections": asked(k, 2)})
    for k in range(30, 46):
        n = int(rng.integers(3, 6))
        options = ["A lot", "Some", "Not much", "Not at all", "DK/Refused"][:n]
        rows.append({"question": FORK_QUESTIONS[k], "options": options, "selections": asked(k, n)})
        if k % 5 == 0:
            rows.append({"question": f"Not one of the fork's questions, number {k}?", "options": ["Yes", "No"],
                         "selections": asked(k, 2)})
    rows += [
        {"question": FORK_QUESTIONS[46], "options": ["Yes", "No"],
         "selections": {c: [0.5, 0.5] for c in countries}},
        {"question": FORK_QUESTIONS[47], "options": ["First", "Second", "Third"],
         "selections": {c: [0.2, 0.4, 0.4] for c in reversed(countries)}},
        {"question": FORK_QUESTIONS[48], "options": ["Yes", "No", "DK/Refused"],
         "selections": {c: [0.0, 0.0, 0.0] if c == "France" else [0.3, 0.3, 0.4] for c in countries}},
        {"question": FORK_QUESTIONS[49], "options": "[0.0, 1.0, 2.0, 3.0, 'Best possible']",
         "selections": asked(49, 5)},
        {"question": "  " + FORK_QUESTIONS[50].upper(), "options": ["Favor", "Oppose"], "selections": asked(50, 2)},
        {"question": FORK_QUESTIONS[30], "options": ["Better", "Worse"], "selections": asked(30, 2)},
        {"question": "", "options": ["Yes", "No"], "selections": {"France": [0.5, 0.5]}},
    ]
    return rows


# GOQA's own spellings, a sample note and a country the 1:110m map has no shape for.
WORLD_COUNTRIES = {"Britain": 44, "Brazil (Non-national sample)": 44, "Singapore": 44, "S. Korea": 30, "Kenya": 5}


def make_world_rows(questions_per_country: dict[str, int] = WORLD_COUNTRIES, seed: int = 3) -> list[dict]:
    """Pew-style questions (texts outside the fork's subset; binary and three-option in turn), question
    i asked in every country given more than i questions, so countries differ in how many they have."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(max(questions_per_country.values())):
        options = ["Yes", "No"] if i % 2 == 0 else ["More", "Less", "The same"]
        asked = [c for c, n in questions_per_country.items() if n > i]
        rows.append({"question": f"World question number {i}?", "options": options,
                     "selections": {c: _shares(rng, len(options)) for c in asked}})
    return rows
