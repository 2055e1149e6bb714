"""Checking requested countries against the countries a GOQA file has."""

from __future__ import annotations

import difflib

from persona_icm.types import DataError


def check_countries(requested: list[str], known: list[str]) -> None:
    """Raise DataError naming every requested country that GOQA does not have, with close matches."""
    known_set = set(known)
    lower = {k.lower(): k for k in known}
    problems = []
    for country in requested:
        if country in known_set:
            continue
        close = difflib.get_close_matches(country, known, n=4, cutoff=0.6)
        if country.lower() in lower and lower[country.lower()] not in close:
            close.insert(0, lower[country.lower()])
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "no close match"
        problems.append(f"{country!r} ({hint})")
    if problems:
        raise DataError(
            f"unknown countr{'y' if len(problems) == 1 else 'ies'} in this GOQA file: "
            f"{'; '.join(problems)}. It has {len(known)} countries."
        )
