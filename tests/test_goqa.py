import hashlib

import pytest

from persona_icm import goqa
from persona_icm.goqa import (
    GoqaFormatError,
    GoqaUnavailable,
    GoqaWarning,
    ingest_goqa,
    question_id,
    read_goqa,
    resolve_goqa_path,
)
from persona_icm.warehouse import open_warehouse
from tests.goqa_fixtures import COUNTRIES, make_rows, write_goqa

# The fixture's all-zero share list warns on every read; the warning has its own test.
pytestmark = pytest.mark.filterwarnings("ignore::persona_icm.goqa.GoqaWarning")


def _warehouse_digest(wh) -> str:
    parts = []
    for table, order in [
        ("goqa_sources", "source_sha256"),
        ("goqa_questions", "source_sha256, question_id"),
        ("goqa_selections", "source_sha256, question_id, country, option_idx"),
    ]:
        parts.append(repr(wh.sql(f"SELECT * FROM {table} ORDER BY {order}").rows()))
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def test_reads_the_goqa_format_with_its_awkward_rows(tmp_path):
    rows = make_rows()
    table = read_goqa(write_goqa(tmp_path / "g.csv", rows))
    assert table.n_rows == len(rows)
    assert table.n_empty_question_rows == 1
    assert table.questions.height == len(rows) - 1
    wvs = table.questions.filter(table.questions["source"] == "WVS").row(0, named=True)
    assert wvs["options"] == ["Not important at all", "1.0", "2.0", "3.5", "Very important", "Don't know"]  # as Python and the fork write them
    assert wvs["question"].count("\n") == 2  # multi-line text kept
    assert wvs["question_id"] == question_id(wvs["question"], wvs["options"], "WVS")
    tie = table.selections.filter(
        (table.selections["question_id"] == table.questions.filter(table.questions["question"] == "A tied question?")["question_id"][0])
        & (table.selections["country"] == "France")
    )
    assert tie.sort("option_idx")["share"].to_list() == [0.2, 0.4, 0.4]
    expected = sum(len(r["selections"]) * len(r["options"]) for r in rows[:-3] if isinstance(r["options"], list))
    expected += len(COUNTRIES) * 6 + len(COUNTRIES) * 2  # the WVS and the nobody-answered rows
    assert table.selections.height == expected


def test_question_ids_do_not_depend_on_the_file(tmp_path):
    rows = make_rows()
    a = read_goqa(write_goqa(tmp_path / "a.csv", rows)).questions
    b = read_goqa(write_goqa(tmp_path / "b.csv", rows[::-1])).questions
    assert dict(zip(a["question"], a["question_id"], strict=True)) == dict(zip(b["question"], b["question_id"], strict=True))
    assert a["question_id"].n_unique() == a.height


def test_repeated_rows_get_distinct_ids(tmp_path):
    row = {"question": "Same?", "options": ["Yes", "No"], "selections": {"France": [0.6, 0.4]}}
    again = {**row, "selections": {"France": [0.3, 0.7], "Japan": [0.5, 0.5]}}  # asked again, other answers
    questions = read_goqa(write_goqa(tmp_path / "g.csv", [row, again])).questions
    assert questions["question_id"].n_unique() == 2


def test_an_exact_copy_of_a_row_is_refused_naming_the_question(tmp_path):
    """It would become two identical groups of one question on the same side of the split."""
    row = {"question": "Same?", "options": ["Yes", "No"], "selections": {"France": [0.6, 0.4]}}
    other = {"question": "Other?", "options": ["Yes", "No"], "selections": {"France": [0.1, 0.9]}}
    with pytest.raises(GoqaFormatError, match=r"g.csv, data row 3 \('Same\?'\): an exact copy of data row 1"):
        read_goqa(write_goqa(tmp_path / "g.csv", [row, other, row]))


@pytest.mark.parametrize(
    "selections",
    [
        "defaultdict(<class 'list'>, {'France': [0.5, 0.5]",  # cut off
        "defaultdict(<class 'list'>, {'France': [0.5, nan]})",  # not a literal
        "defaultdict(<class 'list'>, {'France': __import__('os').system('touch PWNED')})",
        "defaultdict(<class 'list'>, {'France': ['a', 'b']})",
        "defaultdict(<class 'list'>, [0.5, 0.5])",
        "defaultdict(<class 'list'>, {'France': [55.0, 45.0]})",  # percentages
    ],
)
def test_malformed_selections_are_an_error_naming_the_row(tmp_path, monkeypatch, selections):
    monkeypatch.chdir(tmp_path)
    rows = make_rows(n_binary=2, n_multi=0)
    rows[1]["selections"] = selections
    with pytest.raises(GoqaFormatError, match=r"data row 2 .*selections|data row 2 .*shares"):
        read_goqa(write_goqa(tmp_path / "g.csv", rows))
    assert not (tmp_path / "PWNED").exists()


def test_option_share_length_mismatch_is_an_error(tmp_path):
    rows = make_rows(n_binary=3, n_multi=0)
    rows[2]["selections"] = {"France": [0.5, 0.5], "Japan": [0.2, 0.3, 0.5]}
    with pytest.raises(GoqaFormatError, match=r"data row 3 .*'Japan' has 3 shares for 2 options"):
        read_goqa(write_goqa(tmp_path / "g.csv", rows))


def test_bad_options_are_an_error(tmp_path):
    rows = make_rows(n_binary=2, n_multi=0)
    rows[0]["options"] = "['Yes', 'No'"
    with pytest.raises(GoqaFormatError, match="data row 1 .*options is not a list literal"):
        read_goqa(write_goqa(tmp_path / "g.csv", rows))


def test_shares_not_summing_to_one_warn_and_are_kept(tmp_path):
    rows = make_rows(n_binary=2, n_multi=0)
    rows[0]["selections"] = {"France": [0.5, 0.3], "Japan": [0.5, 0.5]}
    with pytest.warns(GoqaWarning, match=r"2 share list\(s\) do not sum to 1.*row 1 'France' sums to 0.800"):
        table = read_goqa(write_goqa(tmp_path / "g.csv", rows))
    assert table.n_share_warnings == 2  # France, and the fixture's all-zero row
    assert sorted(table.selections.filter(table.selections["country"] == "France").head(2)["share"]) == [0.3, 0.5]


def test_a_file_that_is_not_goqa_names_the_missing_columns(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("question,answer\nWhy?,Because\n")
    with pytest.raises(GoqaFormatError, match=r"not a GOQA file: missing column\(s\) selections, options, source"):
        read_goqa(path)


def test_ingest_loads_once_and_a_second_file_gets_its_own_fingerprint(tmp_path):
    first = write_goqa(tmp_path / "a.csv", make_rows())
    with open_warehouse(tmp_path / "w.duckdb") as wh:
        report = ingest_goqa(wh, first)
        assert report.loaded and report.n_questions == len(make_rows()) - 1
        assert wh.scalar("SELECT count(*) FROM goqa_selections") == report.n_selections
        before = _warehouse_digest(wh)
        again = ingest_goqa(wh, first)
        assert not again.loaded and again.n_selections == report.n_selections
        assert _warehouse_digest(wh) == before
        second = ingest_goqa(wh, write_goqa(tmp_path / "b.csv", make_rows(seed=1)))
        assert second.loaded and second.source_sha256 != report.source_sha256
        assert wh.scalar("SELECT count(*) FROM goqa_sources") == 2
        counts = wh.sql("SELECT source_sha256, count(*) AS n FROM goqa_questions GROUP BY 1").rows()
        assert sorted(n for _, n in counts) == [report.n_questions, second.n_questions]


def test_a_failed_ingest_writes_nothing(tmp_path, monkeypatch):
    with open_warehouse(tmp_path / "w.duckdb") as wh:
        ingest_goqa(wh, write_goqa(tmp_path / "a.csv", make_rows()))
        before = _warehouse_digest(wh)
        bad = make_rows(seed=2)
        bad[5]["selections"] = "defaultdict(<class 'list'>, {'France': [0.1"
        with pytest.raises(GoqaFormatError):
            ingest_goqa(wh, write_goqa(tmp_path / "bad.csv", bad))
        assert _warehouse_digest(wh) == before

        real_replace = wh.replace

        def replace_then_fail_on_sources(table, frame, **key):
            if table == "goqa_sources":
                raise OSError("disk full (simulated)")
            return real_replace(table, frame, **key)

        monkeypatch.setattr(wh, "replace", replace_then_fail_on_sources)
        with pytest.raises(OSError, match="simulated"):
            ingest_goqa(wh, write_goqa(tmp_path / "b.csv", make_rows(seed=3)))
        assert _warehouse_digest(wh) == before


def test_resolve_prefers_the_given_path_then_the_environment(tmp_path, monkeypatch):
    path = write_goqa(tmp_path / "g.csv", make_rows(n_binary=1, n_multi=0))
    assert resolve_goqa_path(path, tmp_path / "data") == path
    monkeypatch.setenv("GOQA_PATH", str(path))
    assert resolve_goqa_path(None, tmp_path / "data") == path
    with pytest.raises(FileNotFoundError, match="missing.csv does not exist"):
        resolve_goqa_path(tmp_path / "missing.csv", tmp_path / "data")


def test_offline_download_names_the_local_alternative(tmp_path, monkeypatch):
    """Uses the real huggingface_hub client in its offline mode (no network is touched)."""
    import huggingface_hub.constants

    monkeypatch.delenv("GOQA_PATH", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(GoqaUnavailable, match=r"Anthropic/llm_global_opinions.*--goqa-path.*GOQA_PATH"):
        resolve_goqa_path(None, tmp_path / "data")
    assert not (tmp_path / "data" / "global_opinions.csv").exists()


def test_download_lands_once_in_the_data_dir(tmp_path, monkeypatch):
    """hf_hub_download is replaced by a stub that copies a fixture (the hub is unreachable here)."""
    import huggingface_hub

    fixture = write_goqa(tmp_path / "fixture.csv", make_rows(n_binary=1, n_multi=0))
    calls = []

    def stub_hf_hub_download(repo_id, filename, repo_type, local_dir):
        calls.append((repo_id, filename, repo_type))
        return str(fixture)

    monkeypatch.delenv("GOQA_PATH", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", stub_hf_hub_download)
    data = tmp_path / "data"
    first = resolve_goqa_path(None, data)
    second = resolve_goqa_path(None, data)
    assert first == second == data / goqa.CACHED_NAME
    assert first.read_bytes() == fixture.read_bytes()
    assert calls == [("Anthropic/llm_global_opinions", "data/global_opinions.csv", "dataset")]
