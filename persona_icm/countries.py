"""Checking requested countries against the countries a GOQA file has; their ids on the world map.

GOQA names countries its own way ("Britain", "S. Korea", "Palest. ter.", "Brazil (Non-national
sample)"). data/country_ids.csv maps each name to its ISO 3166-1 numeric code, the id of its shape in
the vendored world map (data/world-atlas/countries-110m.json, SOURCE.md there).
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import re
from functools import cache
from importlib.resources import files
from typing import Any

from persona_icm.types import DataError

WORLD_ATLAS_SHA256 = "2516c915867c7baf18ddec727aec46c315541a07cfb3d79a6559b05d5e94eee8"
# GOQA's sample notes: "Brazil (Non-national sample)", "India (Old national sample)"
_SAMPLE_NOTE = re.compile(r"\s*\([^()]*sample\)$")


@cache
def _map_ids() -> dict[str, str]:
    text = (files("persona_icm") / "data" / "country_ids.csv").read_text(encoding="utf-8")
    return {row["goqa_country"]: row["iso_numeric"] for row in csv.DictReader(text.splitlines())}


def map_id(country: str) -> str | None:
    """The ISO 3166-1 numeric code of a GOQA country name ("Britain" -> "826"), None when unknown. A
    name with a sample note takes the id of the name before the note."""
    ids = _map_ids()
    return ids.get(country) or ids.get(_SAMPLE_NOTE.sub("", country))


def is_national_sample(country: str) -> bool:
    """False for GOQA's "(Non-national sample)" names, which share their map id with the national one."""
    return "non-national sample" not in country.lower()


@cache
def world_atlas() -> dict[str, Any]:
    """The vendored world map (TopoJSON, object `countries`), checked against its recorded sha256."""
    data = (files("persona_icm") / "data" / "world-atlas" / "countries-110m.json").read_bytes()
    if hashlib.sha256(data).hexdigest() != WORLD_ATLAS_SHA256:
        raise DataError("persona_icm/data/world-atlas/countries-110m.json does not match its sha256 (SOURCE.md there)")
    return json.loads(data)


def atlas_ids() -> frozenset[str]:
    """The ids of the shapes the world map draws."""
    return frozenset(g["id"] for g in world_atlas()["objects"]["countries"]["geometries"] if g.get("id"))


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
