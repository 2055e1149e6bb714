import numpy as np
import polars as pl
import pytest

from persona_icm.claims import (
    NON_SUBSTANTIVE,
    DataError,
    DataWarning,
    build_claims,
    build_dataset,
    export_dataset,
    load_country_split,
    prepare_dataset,
    split_claims,
)
from persona_icm.config import DataConfig
from persona_icm.goqa import read_goqa
from persona_icm.warehouse import open_warehouse
from tests.goqa_fixtures import COUNTRIES, make_rows, write_goqa

pytestmark = pytest.mark.filterwarnings("ignore::persona_icm.goqa.GoqaWarning")
US_FR_JP = ["United States", "France", "Japan"]


@pytest.fixture
def goqa_file(tmp_path):
    return write_goqa(tmp_path / "goqa.csv", make_rows(n_binary=12, n_multi=8))


@pytest.fixture
def table(goqa_file):
    return read_goqa(goqa_file)


def _cfg(goqa_file, **kw):
    """The balanced rule (these tests are about it; tests/test_fork_chain.py covers protocol fork)."""
    defaults = {"protocol": "balanced", "countries": US_FR_JP, "dataset": "all", "require_all_countries": True}
    return DataConfig(goqa_path=goqa_file, **(defaults | kw))


def _build(table, cfg):
    return build_dataset(table.questions, table.selections, cfg, table.source_sha256)


def test_labels_are_the_argmax_with_ties_to_the_lowest_index(table, goqa_file):
    ds = _build(table, _cfg(goqa_file))
    claims = ds.claims.join(table.selections, on=["question_id", "country", "option_idx"], suffix="_goqa")
    assert (claims["share"] == claims["share_goqa"]).all()
    per_group = ds.claims.group_by("group_id").agg(pl.col("label").sort(), pl.col("option_idx"), pl.len())
    assert (per_group["len"] == 2).all() and per_group["label"].to_list() == [[0, 1]] * per_group.height
    best = table.selections.group_by("question_id", "country").agg(
        top=pl.col("option_idx").sort_by(pl.col("share"), -pl.col("option_idx"), descending=True).first()
    )
    tops = ds.claims.filter(pl.col("label") == 1).join(best, on=["question_id", "country"])
    assert tops.height == ds.claims.height // 2
    assert (tops["option_idx"] == tops["top"]).all()
    tied = ds.claims.filter(pl.col("tie"))
    assert set(tied["option"]) >= {"Second"}  # the tied question: options 1 and 2 share 0.4
    assert tied.filter(pl.col("label") == 1)["option"].unique().to_list() == ["Second"]
    assert not ds.claims.filter(~pl.col("tie") & pl.col("group_id").is_in(tied["group_id"].implode())).height


def test_binary_keeps_two_option_questions_and_drop_flag_counts_after_dropping(table, goqa_file):
    binary = _build(table, _cfg(goqa_file, dataset="binary"))
    assert binary.claims.height == 12 * 3 * 2  # the 12 binary questions, 3 countries
    assert set(binary.claims["option"]) == {"Agree", "Disagree"}
    dropped = _build(table, _cfg(goqa_file, dataset="binary", drop_non_substantive=True))
    assert dropped.claims.height == 13 * 3 * 2  # Yes/No/DK-Refused is binary without DK
    assert "DK/Refused" not in set(dropped.claims["option"])
    yes_no = dropped.claims.filter(pl.col("option").is_in(["Yes", "No"]))
    assert yes_no.filter(pl.col("label") == 1)["option"].unique().to_list() == ["No"]  # DK was top
    kept = _build(table, _cfg(goqa_file)).claims.join(table.questions, on="question_id")
    dk_top = kept.filter(pl.col("question") == "Yes, no or don't know?", pl.col("label") == 1)
    assert dk_top["option"].to_list() == ["DK/Refused"] * 3


def test_non_substantive_options_are_recognised():
    for option in ["DK/Refused", "Don't know", "Don\u2019t know".replace("\u2019", "'"), "No answer",
                   "No answer/refused", "Missing; Not available", "Other missing; Multiple answers Mail (EVS)",
                   "Refused", "Don't Know"]:
        assert NON_SUBSTANTIVE.match(option), option
    for option in ["Other reasons", "None at all", "Not much", "Disagree", "Dark"]:
        assert not NON_SUBSTANTIVE.match(option), option


def test_the_rule_takes_gas_questions_asked_in_every_country(tmp_path):
    rows = make_rows(n_binary=6, n_multi=0)
    rows[0]["selections"].pop("Japan")
    table = read_goqa(write_goqa(tmp_path / "g.csv", rows))
    ds = _build(table, _cfg(tmp_path / "g.csv"))
    questions = set(ds.claims.join(table.questions, on="question_id")["question"])
    assert rows[0]["question"] not in questions  # not asked in Japan
    assert "A question nobody answered?" not in questions  # all-zero shares in the US
    assert not [q for q in questions if q.startswith("How important is God")]  # WVS
    assert ds.report["questions_missing_a_country"] == 2
    assert ds.report["groups_without_answers"] == 1
    both = _build(table, _cfg(tmp_path / "g.csv", question_sources=["GAS", "WVS"]))
    assert both.claims["question_id"].n_unique() == ds.claims["question_id"].n_unique() + 1
    assert (ds.claims.group_by("country").len()["len"] == ds.claims.height // 3).all()
    anywhere = _build(table, _cfg(tmp_path / "g.csv", require_all_countries=False))
    per_country = dict(anywhere.claims.group_by("country").agg(pl.col("question_id").n_unique()).rows())
    n = ds.claims["question_id"].n_unique()
    assert per_country == {"United States": n + 1, "France": n + 2, "Japan": n + 1}
    sides = anywhere.splits.join(anywhere.claims.select("claim_id", "question_id"), on="claim_id")
    assert (sides.group_by("question_id").agg(pl.col("split").n_unique())["split"] == 1).all()


def test_same_seed_same_claims_different_seed_different_false_options(table, goqa_file):
    a, b = _build(table, _cfg(goqa_file)), _build(table, _cfg(goqa_file))
    assert a.dataset_id == b.dataset_id and a.claims.equals(b.claims) and a.splits.equals(b.splits)
    c = _build(table, _cfg(goqa_file, seed=1))
    assert c.dataset_id != a.dataset_id
    assert c.claims.filter(pl.col("label") == 1).drop("dataset_id").equals(
        a.claims.filter(pl.col("label") == 1).drop("dataset_id")
    )
    assert set(c.claims["claim_id"]) != set(a.claims["claim_id"])  # other multi-option draws


def test_split_is_by_question_capped_in_whole_groups(table, goqa_file):
    cfg = _cfg(goqa_file, train_cap=9, test_cap=5)
    ds = _build(table, cfg)
    sides = ds.splits.join(ds.claims.select("claim_id", "question_id", "group_id"), on="claim_id")
    assert (sides.group_by("question_id").agg(pl.col("split").n_unique())["split"] == 1).all()
    sizes = sides.group_by("country", "split").agg(pl.len(), pl.col("group_id").n_unique().alias("groups"))
    assert sorted(sizes.filter(pl.col("split") == "train")["len"]) == [8, 8, 8]  # 9 -> 4 groups
    assert sorted(sizes.filter(pl.col("split") == "test")["len"]) == [4, 4, 4]  # 5 -> 2 groups
    assert (sizes["len"] == 2 * sizes["groups"]).all()
    per_country = sides.group_by("country").agg(pl.col("question_id").unique().sort())
    assert len({tuple(q) for q in per_country["question_id"]}) == 1  # same questions everywhere


def test_split_stays_balanced_when_countries_have_different_questions(tmp_path):
    rows = make_rows(n_binary=60, n_multi=0)
    rng = np.random.default_rng(3)
    for row in rows[:60]:  # each country is asked about half of the questions
        row["selections"] = {c: s for c, s in row["selections"].items() if rng.random() < 0.5} or {"France": [0.3, 0.7]}
    path = write_goqa(tmp_path / "g.csv", rows)
    table = read_goqa(path)
    for split_seed in range(5):
        cfg = _cfg(path, dataset="binary", require_all_countries=False, train_cap=500, test_cap=500, split_seed=split_seed)
        ds = _build(table, cfg)
        sides = ds.splits.join(ds.claims.select("claim_id", "question_id"), on="claim_id")
        assert (sides.group_by("question_id").agg(pl.col("split").n_unique())["split"] == 1).all()
        share = sides.group_by("country").agg((pl.col("split") == "train").mean())
        assert share["split"].is_between(0.68, 0.82).all(), share


def test_different_split_seed_gives_a_different_split(table, goqa_file):
    a = _build(table, _cfg(goqa_file, train_cap=20, test_cap=10))
    b = _build(table, _cfg(goqa_file, train_cap=20, test_cap=10, split_seed=7))
    assert a.claims.drop("dataset_id").equals(b.claims.drop("dataset_id"))
    train = [set(d.splits.filter(pl.col("split") == "train")["claim_id"]) for d in (a, b)]
    assert train[0] != train[1]
    assert b.splits["split_seed"].unique().to_list() == [7]


def test_unknown_country_lists_close_matches(table, goqa_file):
    with pytest.raises(DataError, match=r"'United Stats' \(did you mean 'United States'"):
        _build(table, _cfg(goqa_file, countries=["United Stats", "France"]))
    with pytest.raises(DataError, match=r"'france' \(did you mean 'France'"):
        _build(table, _cfg(goqa_file, countries=["france"]))
    with pytest.raises(DataError, match=r"'Atlantis' \(no close match\)"):
        _build(table, _cfg(goqa_file, countries=["Atlantis"]))


def test_empty_split_names_the_country_and_caps(tmp_path):
    rows = make_rows(n_binary=1, n_multi=0)
    path = write_goqa(tmp_path / "g.csv", rows)
    table = read_goqa(path)
    with pytest.raises(DataError, match=r"empty test split for 'United States': it has 1 question group.*train_cap 125, test_cap 50"):
        _build(table, _cfg(path, dataset="binary"))


def test_no_group_for_a_country_is_an_error_naming_the_selection(table, goqa_file):
    with pytest.raises(DataError, match=r"no question group for 'Japan' passes the selection \(sources WVS, asked in all"):
        _build(table, _cfg(goqa_file, question_sources=["WVS"], countries=["Japan"], dataset="binary"))


def test_question_list_selects_questions_and_reports_unmatched(tmp_path, table, goqa_file):
    rows = make_rows(n_binary=12, n_multi=8)
    binary_0, binary_1, multi_3 = rows[0]["question"], rows[1]["question"], rows[15]["question"]
    listed = tmp_path / "questions.txt"
    listed.write_text(
        f"# a comment\n{binary_0}\n  {multi_3.replace(' ', '   ', 2)}\n"
        "How important is God in your life? Please use this scale.\nNot a GOQA question\n"
    )
    with pytest.warns(DataWarning, match=r"1 of 4 entries .*'Not a GOQA question'"):
        ds = _build(table, _cfg(goqa_file, question_list=listed, train_fraction=0.5, train_cap=2, test_cap=2))
    chosen = set(ds.claims.join(table.questions, on="question_id")["question"])
    assert chosen == {
        binary_0,
        multi_3,
        "How important is God in your life?\n\nPlease use this scale.",
    }
    assert ds.report["question_list_unmatched"] == ["Not a GOQA question"]
    as_csv = tmp_path / "questions.csv"
    pl.DataFrame({"id": [1, 2], "question": [binary_0, binary_1]}).write_csv(as_csv)
    from_csv = _build(table, _cfg(goqa_file, question_list=as_csv, train_fraction=0.5, train_cap=2, test_cap=2))
    assert from_csv.claims["question_id"].n_unique() == 2
    assert from_csv.dataset_id not in (ds.dataset_id, _build(table, _cfg(goqa_file)).dataset_id)
    nothing = tmp_path / "none.txt"
    nothing.write_text("Nope\n")
    with pytest.raises(DataError, match="no entry of question list"), pytest.warns(DataWarning):
        _build(table, _cfg(goqa_file, question_list=nothing))


def test_warehouse_round_trip_and_byte_identical_exports(tmp_path, goqa_file):
    cfg = _cfg(goqa_file, train_cap=12, test_cap=6)
    exports = []
    for name in ("a", "b"):
        with open_warehouse(tmp_path / f"{name}.duckdb") as wh:
            ds = prepare_dataset(wh, cfg, data_dir=tmp_path / "data")
            prepare_dataset(wh, cfg, data_dir=tmp_path / "data")  # again: replaces, never duplicates
            assert wh.scalar("SELECT count(*) FROM claims") == ds.claims.height
            assert wh.scalar("SELECT count(*) FROM splits") == ds.splits.height
            for country in US_FR_JP:
                from_wh = load_country_split(wh, ds.dataset_id, country)
                assert from_wh == ds.country_split(country)
                assert len(from_wh.train) == 12 and len(from_wh.test) == 6
                assert [c.gold for c in from_wh.train].count(1) == 6
                assert all(c.country == country and isinstance(c.claim_id, str) for c in from_wh.test)
            exports.append([p.read_bytes() for p in export_dataset(wh, ds.dataset_id, tmp_path / name)])
    assert exports[0] == exports[1] and len(exports[0][0]) > 100


def test_a_failed_dataset_write_leaves_the_previous_one(tmp_path, goqa_file, monkeypatch):
    with open_warehouse(tmp_path / "w.duckdb") as wh:
        ds = prepare_dataset(wh, _cfg(goqa_file), data_dir=tmp_path / "data")
        before = wh.sql("SELECT * FROM claims ORDER BY claim_id").rows(), wh.sql("SELECT * FROM splits ORDER BY claim_id").rows()
        real_replace = wh.replace

        def fail_on_splits(table, frame, **key):
            if table == "splits":
                raise OSError("simulated failure")
            return real_replace(table, frame.head(3), **key)

        monkeypatch.setattr(wh, "replace", fail_on_splits)
        with pytest.raises(OSError, match="simulated"):
            prepare_dataset(wh, _cfg(goqa_file), data_dir=tmp_path / "data")
        after = wh.sql("SELECT * FROM claims ORDER BY claim_id").rows(), wh.sql("SELECT * FROM splits ORDER BY claim_id").rows()
        assert after == before and len(before[0]) == ds.claims.height


def test_build_claims_and_split_claims_compose(table, goqa_file):
    cfg = _cfg(goqa_file, countries=COUNTRIES)
    claims, report = build_claims(table.questions, table.selections, cfg, "ds_x")
    splits = split_claims(claims, table.questions, cfg)
    assert set(splits["claim_id"]) <= set(claims["claim_id"])
    assert report["groups_by_country"] == {c: claims.height // 8 for c in COUNTRIES}
    assert splits.group_by("country", "split").agg(pl.col("position").sort()).with_columns(
        ok=pl.col("position") == pl.int_ranges(pl.col("position").list.len())
    )["ok"].all()


def test_data_config_rejects_bad_values():
    from pydantic import ValidationError

    for bad in ({"train_cap": 1}, {"test_cap": 0}, {"train_fraction": 1.0}, {"countries": []},
                {"countries": ["France", "France"]}, {"question_sources": []}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            DataConfig(**bad)


def test_loading_a_missing_dataset_or_country_is_an_error(tmp_path, goqa_file):
    with open_warehouse(tmp_path / "w.duckdb") as wh:
        ds = prepare_dataset(wh, _cfg(goqa_file), data_dir=tmp_path / "data")
        with pytest.raises(LookupError, match="no dataset ds_nope"):
            load_country_split(wh, "ds_nope", "France")
        with pytest.raises(LookupError, match="no split claims for country 'Germany'"):
            load_country_split(wh, ds.dataset_id, "Germany")


def test_the_default_is_the_forks_protocol_and_balanced_uses_every_question_a_country_has():
    assert DataConfig().protocol == "fork"
    assert DataConfig(protocol="balanced").require_all_countries is False
