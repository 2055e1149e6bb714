"""A small GOQA CSV in the real file's format (Python-repr selections and options), generated."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.tiny_model import OPTIONS, QUESTIONS

COUNTRIES = ["United States", "France"]


def write_goqa_csv(path: str | Path, n_questions: int = 24, countries: list[str] | None = None, seed: int = 0) -> Path:
    """n_questions two-option Pew (GAS) questions asked in every country, seeded shares."""
    import csv

    rng = np.random.default_rng(seed)
    countries = countries or COUNTRIES
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "selections", "options", "source"])
        for q in range(n_questions):
            question = f"{QUESTIONS[q % len(QUESTIONS)]} (variant {q})"
            a, b = OPTIONS[(2 * q) % len(OPTIONS)], OPTIONS[(2 * q + 1) % len(OPTIONS)]
            shares = {c: [round(float(s), 6), round(1 - float(s), 6)] for c, s in zip(countries, rng.uniform(0.1, 0.9, len(countries)), strict=True)}
            selections = "defaultdict(<class 'list'>, {" + ", ".join(f"{c!r}: {v!r}" for c, v in shares.items()) + "})"
            writer.writerow([question, selections, repr([a, b]), "GAS"])
    return path
