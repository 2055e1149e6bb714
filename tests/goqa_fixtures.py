"""Small GOQA-format CSV files written by the tests themselves (same format as the real file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

COUNTRIES = ["United States", "France", "Japan", "Germany"]


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
    """GAS questions (binary and multi-option with DK/Refused), asked in every country, plus the
    awkward cases of the real file: a WVS row, float options, a multi-line question, a tie, an
    all-zero share list, an empty question row."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_binary):
        rows.append(
            {
                "question": f"Binary question {i}: do you agree?",
                "options": ["Agree", "Disagree"],
                "selections": {c: _shares(rng, 2) for c in countries},
            }
        )
    for i in range(n_multi):
        rows.append(
            {
                "question": f"Multi question {i}: how much?",
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
