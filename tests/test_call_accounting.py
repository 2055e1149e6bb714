"""Call accounting has one producer (CallLog), one sum (call_totals) and one numbering (number_calls)."""

from __future__ import annotations

import ast
from pathlib import Path

import polars as pl

from persona_icm.scoring.base import CALLS_SCHEMA, CallLog, call_totals, calls_frame, number_calls
from persona_icm.scoring.simulated import ENGINE_ORDER, SimulatedBackend
from persona_icm.scoring.synthetic import SyntheticScorer, make_claims
from persona_icm.types import CallRecord, ScoreRequest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("persona_icm", "tasks", "flows", "benchmarks", "scripts")


def sources():
    for folder in SOURCES:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_only_calllog_makes_call_records():
    makers = {
        str(path.relative_to(ROOT))
        for path in sources()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "CallRecord"
    }
    assert makers == {"persona_icm/scoring/base.py"}


def test_call_index_is_assigned_in_one_function():
    assigners = {str(p.relative_to(ROOT)) for p in sources() if "call_index=" in p.read_text()}
    assert assigners == {"persona_icm/scoring/base.py"}


def test_one_simulated_backend_for_plan_and_benchmarks():
    import benchmarks.bench
    import persona_icm.cost

    assert benchmarks.bench.SimulatedBackend is persona_icm.cost.SimulatedBackend is SimulatedBackend
    assert issubclass(SimulatedBackend, CallLog)


def test_synthetic_and_simulated_records_come_from_a_calllog_and_keep_their_phase():
    claims = make_claims(3)
    synthetic = SyntheticScorer({c.claim_id: c.gold for c in claims})
    requests = [ScoreRequest((), c) for c in claims]
    synthetic.score(requests)
    assert isinstance(synthetic.log, CallLog) and synthetic.calls is synthetic.log.calls
    assert [(c.n_prompts, c.prompt_tokens, c.cached_tokens, c.phase) for c in synthetic.calls] == [(6, 120, None, "")]

    class Encoder:  # 20 tokens per prompt, its own for each claim: prompts of two claims share no block
        def encode(self, request):
            return [hash((request.query.claim_id, i)) % 1000 for i in range(20)]

    from persona_icm.kv_cache import PrefixCache

    simulated = SimulatedBackend(synthetic, Encoder(), 16, {ENGINE_ORDER: {"inf": PrefixCache(16, None)}})
    simulated.score(requests)
    simulated.score(requests)
    first, second = simulated.calls
    assert (first.n_prompts, first.prompt_tokens, first.cached_tokens, first.phase) == (6, 120, 0, "icm")
    assert (second.prompt_tokens, second.cached_tokens) == (120, 6 * 16)
    assert simulated.uncached[ENGINE_ORDER]["inf"] == 120 + 120 - 96


def test_call_totals_sums_once_and_an_unknown_cached_count_stays_unknown():
    calls = [CallRecord(2, 30, 10, 0.1), CallRecord(3, 40, 5, 0.2)]
    totals = call_totals(calls)
    assert (totals.calls, totals.prompts, totals.prompt_tokens, totals.cached_tokens) == (2, 5, 70, 15)
    assert call_totals([*calls, CallRecord(1, 1, None, 0.0)]).cached_tokens is None
    assert call_totals([]).calls == 0


def test_number_calls_numbers_a_concatenation_of_frames_in_order():
    a = calls_frame([CallRecord(1, 10, 0, 0.5, "icm"), CallRecord(2, 20, 0, 0.5, "icm")], "m")
    b = calls_frame([CallRecord(3, 30, None, 0.5, "eval:icm")], "m")
    assert a["call_index"].to_list() == [0, 1] and b["call_index"].to_list() == [0]
    both = number_calls(pl.concat([a, b], how="vertical_relaxed"))
    assert both.schema == pl.Schema(CALLS_SCHEMA)
    assert both["call_index"].to_list() == [0, 1, 2] and both["n_prompts"].to_list() == [1, 2, 3]
