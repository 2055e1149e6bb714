"""The `persona-icm` command is one parser, and one function turns its flags into config overrides."""

from __future__ import annotations

from flows.cli import add_run
from persona_icm.cli import build_parser, config_overrides


def parsed(argv: list[str]):
    parser, sub = build_parser()
    add_run(sub)
    return parser.parse_args(argv)


def test_run_and_plan_flags_give_the_same_overrides():
    flags = ["--set", "icm.iterations=50", "--set", 'data.countries=["France"]', "--set", "icm.alpha=x", "--goqa-path", "g.csv"]
    run = parsed(["--warehouse", "w.duckdb", "run", *flags])
    plan = parsed(["--warehouse", "w.duckdb", "plan", *flags])
    expected = {"icm": {"iterations": 50, "alpha": "x"}, "data": {"countries": ["France"], "goqa_path": "g.csv"}, "warehouse_path": "w.duckdb"}
    assert config_overrides(run) == config_overrides(plan) == expected
    assert (run.preset, plan.preset) == ("smoke", "seed")


def test_the_default_warehouse_is_not_an_override():
    assert config_overrides(parsed(["run"])) == {}
