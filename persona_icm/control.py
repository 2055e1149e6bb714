"""The positive control: known-answer questions in GOQA's CSV format (docs/method.md "Positive control").

Every question asks for a country's capital and has two options, the capital and another listed
capital; in every country the capital is the most popular answer. The file runs through the
unchanged pipeline, so a run on it shows
whether ICM recovers labels the model can tell apart; at CPU model sizes every method sits at
chance on real GOQA, where a label-scrambling bug and a model that knows nothing look alike.

The facts are written down here; the file is generated from them (deterministically) on first
use, into data/control_goqa.csv.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

from persona_icm.config import DEFAULT_COUNTRIES

CONTROL_NAME = "control_goqa.csv"
CONTROL_SOURCE = "CONTROL"
CORRECT_SHARE = 0.9
SEED = 0

CAPITALS = (
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
    ("Russia", "Moscow"), ("China", "Beijing"), ("Egypt", "Cairo"), ("Greece", "Athens"), ("United Kingdom", "London"),
    ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"),
    ("Mexico", "Mexico City"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Poland", "Warsaw"), ("Austria", "Vienna"),
    ("Hungary", "Budapest"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Thailand", "Bangkok"),
    ("South Korea", "Seoul"), ("India", "New Delhi"), ("Turkey", "Ankara"), ("Cuba", "Havana"),
    ("Netherlands", "Amsterdam"), ("Belgium", "Brussels"), ("Denmark", "Copenhagen"), ("Switzerland", "Bern"),
    ("Chile", "Santiago"), ("Colombia", "Bogota"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"),
    ("Philippines", "Manila"), ("Nigeria", "Abuja"), ("Morocco", "Rabat"), ("Algeria", "Algiers"),
    ("Ethiopia", "Addis Ababa"), ("Ghana", "Accra"), ("Senegal", "Dakar"), ("Tunisia", "Tunis"),
    ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Syria", "Damascus"), ("Lebanon", "Beirut"), ("Jordan", "Amman"),
    ("Saudi Arabia", "Riyadh"), ("Pakistan", "Islamabad"), ("Bangladesh", "Dhaka"), ("Nepal", "Kathmandu"),
    ("Malaysia", "Kuala Lumpur"), ("Ukraine", "Kyiv"), ("Romania", "Bucharest"), ("Bulgaria", "Sofia"),
    ("Serbia", "Belgrade"), ("Croatia", "Zagreb"), ("Czech Republic", "Prague"), ("New Zealand", "Wellington"),
    ("Uruguay", "Montevideo"),
)
# 44 more, for measuring larger controls (benchmarks/control_separation.py --more-capitals); the
# preset's file keeps the 64 above, so its questions and split do not move.
MORE_CAPITALS = (
    ("Afghanistan", "Kabul"), ("Albania", "Tirana"), ("Armenia", "Yerevan"),
    ("Azerbaijan", "Baku"), ("Belarus", "Minsk"), ("Cambodia", "Phnom Penh"), ("Costa Rica", "San Jose"),
    ("Cyprus", "Nicosia"), ("Ecuador", "Quito"), ("Estonia", "Tallinn"), ("Georgia", "Tbilisi"),
    ("Iceland", "Reykjavik"), ("Jamaica", "Kingston"), ("Kuwait", "Kuwait City"), ("Laos", "Vientiane"),
    ("Latvia", "Riga"), ("Libya", "Tripoli"), ("Lithuania", "Vilnius"), ("Madagascar", "Antananarivo"),
    ("Mali", "Bamako"), ("Malta", "Valletta"), ("Mongolia", "Ulaanbaatar"), ("Mozambique", "Maputo"),
    ("Nicaragua", "Managua"), ("North Korea", "Pyongyang"), ("Oman", "Muscat"), ("Panama", "Panama City"),
    ("Paraguay", "Asuncion"), ("Qatar", "Doha"), ("Rwanda", "Kigali"), ("Slovakia", "Bratislava"),
    ("Slovenia", "Ljubljana"), ("Somalia", "Mogadishu"), ("Sudan", "Khartoum"), ("Uganda", "Kampala"),
    ("Venezuela", "Caracas"), ("Zambia", "Lusaka"), ("Zimbabwe", "Harare"), ("Uzbekistan", "Tashkent"),
    ("United Arab Emirates", "Abu Dhabi"), ("Bahrain", "Manama"), ("Angola", "Luanda"), ("Namibia", "Windhoek"),
    ("Botswana", "Gaborone"),
)


# Wrong options that are no city at all (benchmarks/control_separation.py --animal-options).
ANIMALS = (
    "Elephant", "Giraffe", "Penguin", "Dolphin", "Tiger", "Rabbit", "Horse", "Camel", "Turtle", "Parrot", "Lion",
    "Zebra", "Monkey", "Sheep", "Goat", "Eagle",
)


def capital_questions(
    rng: np.random.Generator, facts: tuple[tuple[str, str], ...] = CAPITALS, wrong_options: tuple[str, ...] = ()
) -> list[tuple[str, str, str]]:
    """(question, correct, wrong): the wrong option is another listed country's capital, or one of
    `wrong_options` when given."""
    capitals = [city for _, city in facts]
    out = []
    for country, city in facts:
        wrong = str(rng.choice(list(wrong_options) or [c for c in capitals if c != city]))
        out.append((f"What is the capital of {country}?", city, wrong))
    return out


def control_frame(
    countries: list[str] = DEFAULT_COUNTRIES,
    facts: tuple[tuple[str, str], ...] = CAPITALS,
    wrong_options: tuple[str, ...] = (),
) -> pl.DataFrame:
    """The control questions as GOQA rows (question, selections, options, source); the correct
    option's place among the two is drawn per question."""
    rng = np.random.default_rng(SEED)
    rows = []
    for question, correct, wrong in capital_questions(rng, facts, wrong_options):
        correct_first = bool(rng.integers(2))
        options = [correct, wrong] if correct_first else [wrong, correct]
        shares = [CORRECT_SHARE, round(1 - CORRECT_SHARE, 3)]
        shares = shares if correct_first else shares[::-1]
        selections = {country: shares for country in countries}
        rows.append(
            {
                "question": question,
                "selections": f"defaultdict(<class 'list'>, {selections!r})",
                "options": repr(options),
                "source": CONTROL_SOURCE,
            }
        )
    return pl.DataFrame(rows)


def write_control_goqa(path: Path) -> Path:
    """Write the control CSV to `path` unless an identical file is already there."""
    text = control_frame().write_csv()
    if path.is_file() and path.read_text() == text:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".csv.partial")
    partial.write_text(text)
    os.replace(partial, path)
    return path
