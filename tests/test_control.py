"""The positive control's data: known answers, in GOQA's format, through the unchanged data path."""

from __future__ import annotations

import ast

import pytest
from pydantic import ValidationError

from persona_icm import goqa
from persona_icm.claims import dataset_from_file
from persona_icm.config import DEFAULT_COUNTRIES, build_config
from persona_icm.control import CAPITALS, CONTROL_NAME, CONTROL_SOURCE, write_control_goqa


def test_control_file_parses_as_goqa_with_the_correct_option_on_top_everywhere(tmp_path):
    table = goqa.read_goqa(write_control_goqa(tmp_path / CONTROL_NAME))
    questions, selections = table.questions, table.selections
    assert 40 <= questions.height <= 80
    assert set(questions["n_options"]) == {2}
    assert set(questions["source"]) == {CONTROL_SOURCE}
    assert set(selections["country"]) == set(DEFAULT_COUNTRIES)
    top = selections.sort("share", descending=True).group_by("question_id", "country").first()
    by_id = {row["question_id"]: row for row in questions.iter_rows(named=True)}
    capital_of = dict(CAPITALS)
    for row in top.iter_rows(named=True):
        question = by_id[row["question_id"]]
        top_option = question["options"][row["option_idx"]]
        assert top_option == capital_of[question["question"].removeprefix("What is the capital of ").rstrip("?")]
    # both orders occur: the correct option's place says nothing
    first_on_top = top.filter(top["option_idx"] == 0).height / top.height
    assert 0.3 < first_on_top < 0.7


def test_control_file_is_rewritten_only_when_it_differs(tmp_path):
    path = write_control_goqa(tmp_path / CONTROL_NAME)
    stamp = path.stat().st_mtime_ns
    assert write_control_goqa(path).stat().st_mtime_ns == stamp
    path.write_text("question,selections,options,source\n")
    assert goqa.read_goqa(write_control_goqa(path)).questions.height > 40


def test_control_preset_builds_its_splits_from_the_generated_file(tmp_path, monkeypatch):
    monkeypatch.setenv("GOQA_PATH", str(tmp_path / "not-read.csv"))
    config = build_config("control")
    _, dataset = dataset_from_file(config.data, data_dir=tmp_path)
    assert (tmp_path / CONTROL_NAME).is_file()
    split = dataset.country_split(config.data.countries[0])
    assert len(split.train) == config.data.train_cap
    assert len(split.test) == config.data.test_cap
    assert {c.question for c in split.train}.isdisjoint({c.question for c in split.test})
    for claims in (split.train, split.test):
        assert sum(c.gold for c in claims) * 2 == len(claims)


def test_control_corpus_refuses_a_goqa_path_by_name():
    with pytest.raises(ValidationError, match="goqa_path"):
        build_config("control", {"data": {"goqa_path": "some.csv"}})


def test_more_capitals_extend_the_control_without_moving_the_preset_file(tmp_path):
    from persona_icm.control import MORE_CAPITALS, control_frame

    facts = CAPITALS + MORE_CAPITALS
    assert len({country for country, _ in facts}) == len({city for _, city in facts}) == len(facts) == 108
    assert control_frame().equals(control_frame(facts=CAPITALS))
    path = tmp_path / "more.csv"
    control_frame(facts=facts).write_csv(path)
    table = goqa.read_goqa(path)
    assert table.questions.height == 108
    # a 24-group training side, as benchmarks/control_separation.py --more-capitals measures it
    data = {"corpus": "goqa", "goqa_path": str(path), "train_fraction": 0.5, "train_cap": 48}
    _, dataset = dataset_from_file(build_config("control", {"data": data}).data)
    split = dataset.country_split("United States")
    assert len({c.group_id for c in split.train}) == 24
    assert len(split.test) == 96


def test_animal_options_replace_only_the_wrong_option():
    from persona_icm.control import ANIMALS, control_frame

    capitals, animals = control_frame(), control_frame(wrong_options=ANIMALS)
    assert capitals["question"].to_list() == animals["question"].to_list()
    capital_of = dict(CAPITALS)
    for row in animals.iter_rows(named=True):
        options = ast.literal_eval(row["options"])
        right = capital_of[row["question"].removeprefix("What is the capital of ").rstrip("?")]
        assert right in options and len(options) == 2
        assert next(o for o in options if o != right) in ANIMALS
