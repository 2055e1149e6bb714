"""A run's id comes from what decides its results (persona_icm/run_identity.py): the same run given
its GOQA file under another spelling, or writing to another spelling of the warehouse path, is the
same run; other file contents make another run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from persona_icm.config import build_config
from persona_icm.run_identity import run_id_for
from tests.test_flows import TABLES, _counts


def _config(goqa: str, warehouse: str, **data):
    return build_config("smoke", {"data": {"goqa_path": goqa, **data}, "warehouse_path": warehouse})


def test_the_run_id_ignores_how_the_paths_are_spelled_but_not_what_the_files_hold(tmp_path, monkeypatch):
    goqa = tmp_path / "goqa.csv"
    goqa.write_text("question,selections,options,source\n")
    (tmp_path / "link.csv").symlink_to(goqa)
    monkeypatch.chdir(tmp_path)
    spellings = [
        _config(str(goqa), str(tmp_path / "wh" / "persona_icm.duckdb")),
        _config("goqa.csv", "wh/persona_icm.duckdb"),
        _config("./link.csv", "wh/../wh/persona_icm.duckdb"),
    ]
    assert len({run_id_for(c, "ds_1", "abc") for c in spellings}) == 1
    assert run_id_for(spellings[0], "ds_2", "abc") != run_id_for(spellings[0], "ds_1", "abc")  # other data
    assert run_id_for(_config("goqa.csv", "wh/x.duckdb", seed=1), "ds_1", "abc") != run_id_for(spellings[0], "ds_1", "abc")


def test_a_chat_template_counts_by_its_contents(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("{country} {question} {opinion}")
    second.write_text("{country} {question} {opinion}")

    def run_id(template: Path) -> str:
        config = build_config("smoke", {"chat_model": {"prompts": {"chat_template": str(template)}}})
        return run_id_for(config, "ds_1", "abc")

    assert run_id(first) == run_id(second)
    second.write_text("In {country}: {question} -> {opinion}")
    assert run_id(first) != run_id(second)


@pytest.mark.slow
def test_two_spellings_of_the_goqa_file_are_one_run_whose_rows_are_replaced(harness, smoke_inputs, tmp_path, monkeypatch):
    """The same smoke run, first with absolute paths, then with the GOQA file through a relative
    symlink and the warehouse as a relative path: one `runs` row, every table the same size."""
    from flows.experiment import persona_icm
    from persona_icm.warehouse import open_warehouse

    warehouse = tmp_path / "wh" / "persona_icm.duckdb"
    overrides = {**smoke_inputs, "warehouse_path": str(warehouse),
                 "eval": {**smoke_inputs["eval"], "methods": ["icm", "golden"]}}
    first = persona_icm(preset="smoke", overrides=overrides, return_state=True)
    assert first.is_completed(), first
    counts = _counts(warehouse)
    assert counts["runs"] == 1 and all(counts[t] > 0 for t in TABLES)

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "survey.csv").symlink_to(smoke_inputs["data"]["goqa_path"])
    monkeypatch.chdir(tmp_path)
    respelled = {**overrides, "data": {**overrides["data"], "goqa_path": os.path.join("data", "survey.csv")},
                 "warehouse_path": os.path.join("wh", "persona_icm.duckdb")}
    second = persona_icm(preset="smoke", overrides=respelled, return_state=True)
    assert second.is_completed(), second
    assert second.result() == first.result()
    assert _counts(warehouse) == counts
    with open_warehouse(warehouse, read_only=True) as wh:
        assert wh.sql("SELECT run_id, status FROM runs").rows() == [(first.result(), "completed")]
