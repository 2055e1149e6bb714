"""`data.countries: all` (every GOQA country with data.min_groups usable question groups, the rest
recorded with their reason), the presets `world` and `world-smoke`, and GOQA country names on the
world map's ids."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from persona_icm import cli
from persona_icm.claims import build_dataset, write_dataset
from persona_icm.config import build_config
from persona_icm.countries import atlas_ids, map_id, world_atlas
from persona_icm.fork_subset import fork_subset
from persona_icm.goqa import read_goqa
from persona_icm.types import DataError
from persona_icm.warehouse import open_warehouse
from tests.goqa_fixtures import (
    COUNTRIES,
    FORK_CHAIN_COUNTRIES,
    WORLD_COUNTRIES,
    make_world_rows,
    write_goqa,
)

# Countries of GOQA (the offline file) that the 1:110m map has no shape for.
OFF_MAP = {"Andorra", "Hong Kong SAR", "Macau SAR", "Maldives", "Singapore"}


@pytest.fixture(scope="module")
def world_file(tmp_path_factory) -> Path:
    return write_goqa(tmp_path_factory.mktemp("world") / "goqa.csv", make_world_rows())


def world_dataset(path: Path, **data):
    table = read_goqa(path)
    cfg = build_config("world", {"data": {"goqa_path": str(path), **data}}).data
    return build_dataset(table.questions, table.selections, cfg, table.source_sha256)


def test_default_min_groups_gives_a_qualifying_country_20_test_claims():
    cfg = build_config("world").data
    assert cfg.min_groups_for_all() == 40  # int(2 * 40 * 0.25) = 20 test claims; 39 groups give 19
    assert build_config("world", {"data": {"train_fraction": 0.5}}).data.min_groups_for_all() == 20
    assert build_config("world", {"data": {"min_groups": 7}}).data.min_groups_for_all() == 7


def test_all_selects_the_countries_with_enough_groups_and_records_the_rest_with_why(world_file):
    dataset = world_dataset(world_file)
    qualify = sorted(c for c, n in WORLD_COUNTRIES.items() if n >= 40)
    assert list(dataset.countries) == qualify
    assert sorted(dataset.splits["country"].unique().to_list()) == qualify
    selection = dataset.selection.sort("country")
    assert selection["country"].to_list() == sorted(WORLD_COUNTRIES)
    assert dict(zip(selection["country"], selection["n_groups"], strict=True)) == WORLD_COUNTRIES
    left = {c: r for c, r in selection.filter(~pl.col("selected")).select("country", "reason").iter_rows()}
    assert left == {"S. Korea": "30 usable question group(s), fewer than min_groups 40",
                    "Kenya": "5 usable question group(s), fewer than min_groups 40"}
    assert dataset.report["countries_left_out"] == left
    # the test split a qualifying country gets holds the 20 claims the default rule sizes it for
    sizes = dataset.splits.filter(pl.col("split") == "test").group_by("country").len()
    assert sizes["len"].min() >= 20

    lower = world_dataset(world_file, min_groups=30)  # another rule is another dataset
    assert "S. Korea" in lower.countries and lower.dataset_id != dataset.dataset_id


def test_all_gives_the_same_claims_as_listing_the_countries_it_selected(world_file):
    every = world_dataset(world_file)
    listed = world_dataset(world_file, countries=list(every.countries))
    assert every.claims.equals(listed.claims.with_columns(dataset_id=pl.lit(every.dataset_id)))
    assert every.splits.drop("dataset_id").equals(listed.splits.drop("dataset_id"))
    assert listed.selection is None and listed.params["countries"] == every.params["countries"]
    assert every.params["countries_rule"] == {"all": True, "min_groups": 40}


def test_the_left_out_record_is_in_the_warehouse_and_a_run_reads_it_through_a_view(world_file, tmp_path):
    from datetime import UTC, datetime

    from persona_icm.warehouse import write_run

    dataset = world_dataset(world_file)
    with open_warehouse(tmp_path / "w.duckdb") as wh:
        write_dataset(wh, dataset)
        write_dataset(wh, dataset)  # idempotent
        write_run(wh, {"run_id": "r1", "preset": "world", "config_json": "{}", "base_model": "x",
                       "countries": list(dataset.countries), "dataset_id": dataset.dataset_id, "code_version": "t",
                       "started_at": datetime.now(UTC), "status": "completed"})
        assert wh.scalar("SELECT count(*) FROM dataset_countries") == len(WORLD_COUNTRIES)
        left = wh.sql("SELECT country, n_groups, reason FROM countries_left_out WHERE run_id = 'r1' ORDER BY country")
    assert left.rows() == [("Kenya", 5, "5 usable question group(s), fewer than min_groups 40"),
                           ("S. Korea", 30, "30 usable question group(s), fewer than min_groups 40")]


def test_no_country_qualifying_is_one_error_naming_the_most_any_has(world_file):
    with pytest.raises(DataError, match=r"no country of this GOQA file has 99 usable question groups .* the most any "
                                        r"has is 44 \(Brazil \(Non-national sample\)\); lower data.min_groups"):
        world_dataset(world_file, min_groups=99)


@pytest.mark.filterwarnings("ignore::persona_icm.goqa.GoqaWarning")  # its all-zero share list
def test_all_under_the_fork_protocol_is_its_countries_in_the_file(tmp_path):
    from tests.goqa_fixtures import make_fork_chain_rows

    path = write_goqa(tmp_path / "goqa.csv", make_fork_chain_rows())
    table = read_goqa(path)
    cfg = build_config("seed", {"data": {"countries": "all", "min_groups": 10}}).data
    dataset = build_dataset(table.questions, table.selections, cfg, table.source_sha256)
    assert list(dataset.countries) == sorted(FORK_CHAIN_COUNTRIES)  # Canada is not one of the fork's 14
    (canada,) = dataset.selection.filter(pl.col("country") == "Canada").iter_rows(named=True)
    assert not canada["selected"] and "not one of the fork's 14 countries" in canada["reason"]


def test_config_refuses_min_groups_with_a_list_and_all_with_require_all_countries():
    with pytest.raises(ValidationError, match="min_groups \\(5\\) applies to countries 'all' only"):
        build_config("seed", {"data": {"min_groups": 5}})
    with pytest.raises(ValidationError, match="require_all_countries"):
        build_config("world", {"data": {"require_all_countries": True}})
    with pytest.raises(ValidationError):
        build_config("seed", {"data": {"countries": "every"}})


def test_world_presets_are_seeds_search_on_every_country_and_the_smoke_twin_is_small():
    seed, world, smoke = build_config("seed"), build_config("world"), build_config("world-smoke")
    assert world.data.countries == smoke.data.countries == "all"
    assert (world.data.protocol, world.data.dataset, world.data.question_sources) == ("balanced", "all", ["GAS", "WVS"])
    assert world.icm.model_dump(exclude={"iterations"}) == seed.icm.model_dump(exclude={"iterations"})
    assert world.icm.iterations == 1500 and world.eval == seed.eval  # the fork's K for dataset `all`
    assert (world.data.train_cap, world.data.test_cap) == (125, 50)
    assert smoke.data.min_groups_for_all() == world.data.min_groups_for_all()  # the same countries
    assert (smoke.data.train_cap, smoke.data.test_cap, smoke.icm.iterations, smoke.eval.demo_sizes) == (8, 4, 4, [])


def test_plan_of_the_world_preset_names_the_countries_left_out(world_file, tmp_path, capsys):
    from persona_icm.tiny_model import write_tiny_model

    model = write_tiny_model(tmp_path / "tiny-llama")
    cli.main(["plan", "--preset", "world", "--goqa-path", str(world_file), "--set", f"base_model.name={model}",
              "--set", "icm.iterations=3"])
    out = capsys.readouterr().out
    assert "data.countries 'all': 3 of 5 countries qualify, 2 left out: S. Korea (30 usable" in " ".join(out.split())
    assert "3 searches" in out


def test_every_goqa_country_of_the_fixtures_and_the_fork_has_a_map_id_with_a_shape():
    names = {*COUNTRIES, *FORK_CHAIN_COUNTRIES, "Canada", *fork_subset().countries, *WORLD_COUNTRIES}
    assert {n: map_id(n) for n in names if map_id(n) is None} == {}
    assert {n for n in names if map_id(n) not in atlas_ids()} == OFF_MAP & names
    assert map_id("Britain") == map_id("Northern Ireland") == "826" and map_id("S. Korea") == "410"
    assert map_id("Brazil (Non-national sample)") == map_id("Brazil") == "076"
    assert map_id("Atlantis") is None
    assert world_atlas()["objects"]["countries"]["type"] == "GeometryCollection"


@pytest.mark.skipif(not os.environ.get("PERSONA_ICM_GOQA_FILE"), reason="opt-in: PERSONA_ICM_GOQA_FILE=<a GOQA file> "
                    "checks that every country of that file has a map id (the file is not part of this repository)")
def test_every_country_of_a_real_goqa_file_has_a_map_id():
    table = read_goqa(Path(os.environ["PERSONA_ICM_GOQA_FILE"]))
    names = table.selections["country"].unique().to_list()
    assert sorted(n for n in names if map_id(n) is None) == []
    assert sorted(n for n in names if map_id(n) not in atlas_ids()) == sorted(OFF_MAP & set(names))
