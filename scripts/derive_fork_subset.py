"""Write persona_icm/data/fork_subset.json from the fork's data/global_opinion_data.csv (run once).

The fork (github.com/ijamil1/Persona-Elicitation) keeps the GOQA questions named in that file's header:
each header cell after the first is a question followed by "\\nA. ..." options; the question is the part
before the first "\\nA.", stripped. Its countries are the first column of the other rows.

    python scripts/derive_fork_subset.py PATH/TO/global_opinion_data.csv
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "persona_icm" / "data" / "fork_subset.json"


def derive(csv_path: Path) -> dict:
    with open(csv_path) as f:  # as the fork reads it (universal newlines)
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    questions = [re.split(r"\nA\.", cell)[0].strip() for cell in header[1:]]
    countries = [row[0] for row in body if row]
    if len({q.lower() for q in questions}) != len(questions) or len(set(countries)) != len(countries):
        raise SystemExit(f"{csv_path}: repeated questions or countries")
    return {
        "what": "The GOQA question subset and countries of the persona-elicitation fork: questions as its "
        "data_transformation/transform_opinions.py extracts them (matched to GOQA by strip().lower()), "
        "countries as its first column.",
        "source": "https://github.com/ijamil1/Persona-Elicitation, data/global_opinion_data.csv",
        "source_sha256": hashlib.sha256(csv_path.read_bytes()).hexdigest(),
        "licence": "Question texts from GlobalOpinionQA (Anthropic/llm_global_opinions, Durmus et al. 2023), "
        "CC-BY-NC-SA-4.0; the survey questions are Pew Research Center's Global Attitudes Survey.",
        "countries": countries,
        "questions": questions,
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(derive(Path(sys.argv[1])), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")
