"""Persisted task and flow results are JSON, not pickles (whoever can write a pickle into the
shared result storage can run code in every worker that reads it), and they read back identical."""

from __future__ import annotations

import importlib
import json
import math
import pkgutil
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent


def persisted_tasks_and_flows() -> dict[str, object]:
    """Every Prefect task and flow of tasks/ and flows/ that persists its result."""
    from prefect import Flow
    from prefect.tasks import Task

    found = {}
    for package in ("tasks", "flows"):
        for info in pkgutil.iter_modules([str(ROOT / package)]):
            module = importlib.import_module(f"{package}.{info.name}")
            for name, obj in vars(module).items():
                if isinstance(obj, Task | Flow) and obj.__module__ == module.__name__:
                    if obj.persist_result or obj.result_storage is not None:
                        found[f"{module.__name__}.{name}"] = obj
    return found


def test_every_persisted_result_uses_the_json_serializer():
    found = persisted_tasks_and_flows()
    assert {"tasks.search.icm_search", "tasks.evaluation.evaluate_method", "flows.country.country_flow",
            "flows.chat.chat_flow", "flows.search.search_flow", "flows.batch.batch_flow"} <= set(found)
    assert {name: obj.result_serializer for name, obj in found.items()} == dict.fromkeys(found, "json")


def assert_same(a, b) -> None:
    """Equal field by field, frames with their dtypes; a DataFrame has no truth value for ==."""
    assert type(a) is type(b)
    if isinstance(a, pl.DataFrame):
        assert_frame_equal(a, b, check_exact=True)
    elif isinstance(a, dict):
        assert list(a) == list(b) and [type(k) for k in a] == [type(k) for k in b]
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, BaseModel):
        for field in type(a).model_fields:
            assert_same(getattr(a, field), getattr(b, field))
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert (a, type(a)) == (b, type(b)) and (not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b))


def sample_results():
    from flows.country import CountryResult
    from persona_icm.evaluate import DEMO_SCHEMA, PREDICTION_SCHEMA
    from persona_icm.icm.search import LABELS_SCHEMA, TRACE_SCHEMA
    from persona_icm.scoring.base import CALLS_SCHEMA
    from tasks.evaluation import MethodResult
    from tasks.search import SearchResult

    def frame(schema, rows):
        return pl.DataFrame(rows, schema=schema, orient="row")

    labels = frame(LABELS_SCHEMA, [("c1", "g1", 1, 0, 0, -0.0, 1), ("c2", "g1", None, None, None, float("nan"), 0)])
    trace = frame(TRACE_SCHEMA, [(0, None, None, float("-inf"), 1, True, 0, 1e-300, None, 2.5, -1.0, -3.25, 0, 2, 0,
                                  0.5, 3, 4, 120, None)])
    calls = frame(CALLS_SCHEMA, [("hf:m", 0, "search", 4, 120, None, 0.1 + 0.2)])
    search = SearchResult(run_key="k", labels=labels, trace=trace, calls=calls,
                          counters={"iterations": 3, "resumed_from": None, "wall_seconds": 0.0})
    method = MethodResult(
        method="icm", calls=calls, skipped=None,
        predictions=frame(PREDICTION_SCHEMA, [("r", "France", "icm", "many", 4, 0, 0, "c3", "g2", float("inf"), 1, 0)]),
        demos=frame(DEMO_SCHEMA, [("r", "France", "icm", "many", 4, 0, 0, 0, "c1", 1, 1)]),
    )
    skipped = MethodResult(method="zero_shot_chat", predictions=pl.DataFrame(), demos=pl.DataFrame(),
                           calls=calls.clear(), skipped="no chat model")
    country = CountryResult(country="France", searches={0: search, 3: search}, evaluations=[method, skipped])
    return {
        "search": search,
        "country": country,
        "batch": [country, CountryResult(country="Japan", searches={0: search}, evaluations=[skipped])],  # flows.batch
        "chat": {"France": [method], "Japan": [skipped]},  # flows.chat.chat_flow: country -> chat-model methods
    }


@pytest.mark.parametrize("which", ["search", "country", "batch", "chat"])
def test_results_round_trip_identically_through_prefects_json_serializer(which):
    """The bytes are JSON (no pickle), and reading them back gives the same values, dtypes, nulls,
    NaN, infinities, -0.0 and integer dict keys."""
    from prefect.serializers import JSONSerializer

    value = sample_results()[which]
    blob = JSONSerializer().dumps(value)
    json.loads(blob)  # plain JSON
    assert b"pickle" not in blob and b"gASV" not in blob
    assert_same(JSONSerializer().loads(blob), value)


def test_a_frame_of_a_dtype_json_does_not_carry_is_refused():
    from prefect.serializers import JSONSerializer

    from tasks.search import SearchResult

    nested = pl.DataFrame({"x": [[1, 2]]})
    with pytest.raises(ValueError, match=r"dtypes JSON results do not carry: \{'x': 'List\(Int64\)'\}"):
        JSONSerializer().dumps(SearchResult(run_key="k", labels=nested, trace=nested, calls=nested, counters={}))


@pytest.mark.slow
def test_a_cached_search_is_stored_as_json_and_a_cache_hit_is_identical(harness, tmp_path):
    """The real icm-search task (tiny random Llama, hf backend) twice in a flow: the first run
    writes its result file, the second is a cache hit. The file is JSON naming the JSON serializer,
    and both the cache hit and the file read back equal the search's own result."""
    from prefect import flow
    from prefect.results import ResultRecord

    from persona_icm.config import IcmConfig, ModelSpec
    from persona_icm.tiny_model import make_claims, write_tiny_model
    from tasks.search import icm_search

    results = tmp_path / "results"
    search = icm_search.with_options(result_storage=results)
    model = ModelSpec(backend="hf", name=str(write_tiny_model(tmp_path / "tiny-llama")))
    icm = IcmConfig(num_seed=4, iterations=6, checkpoint_every=2)

    @flow(name="search-twice")
    def search_twice(train):
        first = search(train, icm, model, tmp_path / "checkpoints", return_state=True)
        again = search(train, icm, model, tmp_path / "checkpoints", return_state=True)
        return first.name, first.result(), again.name, again.result()

    first_state, first, again_state, again = search_twice(make_claims(10))
    assert (first_state, again_state) == ("Completed", "Cached")
    files = sorted(p for p in results.rglob("*") if p.is_file())
    assert [p.name for p in files] == [f"icm-{first.run_key}"]
    data = files[0].read_bytes()
    record = json.loads(data)
    assert record["metadata"]["serializer"]["type"] == "json" and b"pickle" not in data and b"gASV" not in data
    assert first.trace.height == 7 and first.labels.height == 10
    assert_same(again, first)
    assert_same(ResultRecord.deserialize(data).result, first)
