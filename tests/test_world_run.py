"""The `world-smoke` preset as a user runs it: `persona-icm run --preset world-smoke` on a generated
GOQA file of five countries, two of them with too few questions, with a tiny random Llama. Every
country that qualifies runs; the two left out are in the log line and in the warehouse; the report
has the world map and the ranking."""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET

import pytest

from tests.goqa_fixtures import WORLD_COUNTRIES, make_world_rows, write_goqa
from tests.helpers import ROOT, start_cli_run


@pytest.mark.slow
def test_world_smoke_runs_every_country_that_qualifies_and_maps_them(harness, tmp_path):
    from persona_icm.tiny_model import write_tiny_model
    from persona_icm.warehouse import open_warehouse

    model = str(write_tiny_model(tmp_path / "tiny-llama"))
    goqa = write_goqa(tmp_path / "goqa.csv", make_world_rows())
    warehouse = tmp_path / "warehouse" / "persona_icm.duckdb"
    env = {**os.environ, "PREFECT_API_URL": harness, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    sets = {"base_model.name": model, "chat_model": {"backend": "hf", "name": model}, "eval.bootstrap_samples": 100}
    log = tmp_path / "world-smoke.log"
    started = time.perf_counter()
    proc = start_cli_run(env, warehouse, goqa, sets, log, preset="world-smoke")
    assert proc.wait(timeout=1800) == 0, log.read_text()[-4000:]
    print(f"world-smoke, {len(WORLD_COUNTRIES)} countries in the file: {time.perf_counter() - started:.0f} s")

    qualify = sorted(c for c, n in WORLD_COUNTRIES.items() if n >= 40)
    text = " ".join(log.read_text().split())
    assert "data.countries 'all': 3 of 5 countries qualify, 2 left out: S. Korea (30 usable question group(s)" in text
    with open_warehouse(warehouse, read_only=True) as wh:
        run = wh.sql("SELECT * FROM runs").row(0, named=True)
        left_out = wh.sql("SELECT country, n_groups FROM countries_left_out ORDER BY country").rows()
        icm = wh.sql("SELECT country FROM results_by_country WHERE method = 'icm' AND experiment = 'main' ORDER BY 1")
        ranked = wh.sql("SELECT country FROM country_ranking ORDER BY country")["country"].to_list()
    assert run["status"] == "completed" and run["preset"] == "world-smoke"
    assert run["countries"] == qualify and json.loads(run["config_json"])["data"]["countries"] == "all"
    assert left_out == [("Kenya", 5), ("S. Korea", 30)]
    assert icm["country"].to_list() == qualify == ranked

    report = warehouse.parent / "reports" / run["run_id"]
    page = (report / "report.html").read_text()
    for chart in ("world_map", "country_ranking"):
        assert (report / f"{chart}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert ET.parse(report / f"{chart}.svg").getroot().tag.endswith("svg")
        assert f'id="{chart}"' in page
    assert "Not on the map (no shape at 1:110m): Singapore." in page and "Countries left out (2)" in page
