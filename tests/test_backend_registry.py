"""A scoring backend registered in a test alone (persona_icm.backends.register) reaches every place
that depends on backends: config validation, make_scorer, preflight's window rule and host check,
the tasks' retry rule, and a whole run with rows in the warehouse. No other file names it.

The dummy backend is the synthetic stand-in (persona_icm.scoring.synthetic, not a model) with each
claim's gold label as its hidden truth; its window rule returns what the test sets."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from persona_icm import backends
from persona_icm.config import ModelSpec, build_config
from persona_icm.scoring.synthetic import SyntheticScorer


class DummyRefusal(RuntimeError):
    """The dummy backend's error that waiting cannot fix."""


class DummyScorer(SyntheticScorer):
    def __init__(self, spec):
        super().__init__(truth={}, seed=len(spec.name))
        self.spec = spec

    def score(self, requests):
        for request in requests:
            for claim in (request.query, *(c for c, _ in request.context)):
                self.truth.setdefault(claim.claim_id, claim.gold)
        return super().score(requests)


WINDOW = {"tokens": 100_000}
HOST = {"problem": None}
BUILT: list = []


def build_dummy(spec, api_key):
    scorer = DummyScorer(spec)
    BUILT.append((spec, api_key, scorer))
    return scorer


@pytest.fixture
def dummy():
    from persona_icm.scoring import release_local_models

    WINDOW["tokens"], HOST["problem"] = 100_000, None
    BUILT.clear()
    backends.register(
        backends.Backend(
            "dummy",
            factory=build_dummy,
            in_process=True,
            prompt_window=lambda spec, folder: WINDOW["tokens"],
            host_problem=lambda spec: HOST["problem"],
            non_retryable=(DummyRefusal,),
        )
    )
    try:
        yield
    finally:
        release_local_models()  # the dummy is in-process: its scorers leave make_scorer's cache
        backends.unregister("dummy")


def dummy_overrides(smoke_inputs) -> dict:
    model = smoke_inputs["base_model"]["name"]  # the tiny model's folder: its tokenizer measures prompts
    return {**smoke_inputs, "base_model": {"backend": "dummy", "name": model}, "chat_model": {"backend": "dummy", "name": model}}


def test_an_unknown_backend_is_one_error_listing_the_registered_ones():
    with pytest.raises(ValidationError, match=r"unknown scoring backend 'dummy'; registered backends: hf, openai, synthetic, vllm"):
        ModelSpec(backend="dummy")
    assert backends.names() == ["hf", "openai", "synthetic", "vllm"]


def test_a_registered_backend_flows_through_config_scorer_preflight_and_retry(dummy, smoke_inputs):
    from persona_icm.preflight import InputError, check_run
    from persona_icm.scoring import make_scorer, release_local_models
    from persona_icm.scoring.base import ScoreRequest
    from persona_icm.tiny_model import make_claims
    from tasks.retry import retry_helps

    config = build_config("smoke", dummy_overrides(smoke_inputs))
    assert config.base_model.backend == "dummy" and backends.names() == ["dummy", "hf", "openai", "synthetic", "vllm"]

    scorer = make_scorer(config.base_model, api_key=None)
    assert isinstance(scorer, DummyScorer) and make_scorer(config.base_model) is scorer and len(BUILT) == 1
    claims = make_claims(6)
    request = ScoreRequest(tuple((c, c.gold) for c in claims[:4]), claims[4])
    assert scorer.score([request]) == [SyntheticScorer({c.claim_id: c.gold for c in claims}, seed=scorer.seed).score_one(request)]

    checked = check_run(config)  # the window rule says 100,000 tokens
    assert checked.window == 100_000 and set(checked.longest_prompt) == {"United States", "France"}
    longest = max(checked.longest_prompt.values())
    WINDOW["tokens"] = longest - 1
    with pytest.raises(InputError, match=rf"is {longest} tokens, more than base_model '.*' accepts \({longest - 1}\)"):
        check_run(config)
    WINDOW["tokens"], HOST["problem"] = 100_000, "needs the dummy accelerator"
    with pytest.raises(InputError, match=r"^base_model: needs the dummy accelerator$"):
        check_run(config)

    def failed_with(error):
        def result():
            raise error

        return SimpleNamespace(result=result)

    assert retry_helps(None, None, failed_with(DummyRefusal("no"))) is False
    assert retry_helps(None, None, failed_with(RuntimeError("busy"))) is True

    release_local_models()
    assert make_scorer(config.base_model) is not scorer  # released like hf and vllm models


@pytest.mark.slow
def test_a_run_on_a_registered_backend_fills_the_warehouse(dummy, harness, smoke_inputs, tmp_path):
    """The smoke flow with base and chat model on the dummy backend: searches, evaluations and the
    chat baseline score through it, and the warehouse holds their rows under its name."""
    from flows.experiment import persona_icm
    from persona_icm.warehouse import open_warehouse

    warehouse = tmp_path / "warehouse" / "persona_icm.duckdb"  # its own: test_flows asserts on the shared one's rows
    overrides = {**dummy_overrides(smoke_inputs), "warehouse_path": str(warehouse)}
    state = persona_icm(preset="smoke", overrides=overrides, return_state=True)
    assert state.is_completed(), state
    run_id = state.result()
    model = f"dummy:{overrides['base_model']['name']}"
    with open_warehouse(warehouse, read_only=True) as wh:
        calls = dict(wh.sql("SELECT model, count(*) FROM model_calls WHERE run_id = ? GROUP BY model", [run_id]).iter_rows())
        labels = wh.scalar("SELECT count(*) FROM icm_labels WHERE run_id = ?", [run_id])
        methods = set(wh.sql("SELECT method FROM results_by_country WHERE run_id = ?", [run_id])["method"])
        golden = wh.scalar("SELECT min(accuracy) FROM results_by_country WHERE run_id = ? AND method = 'golden'", [run_id])
    assert list(calls) == [model] and calls[model] > 0
    assert labels == 24  # 12 train claims in each of two countries
    assert {"icm", "golden", "zero_shot_base", "zero_shot_chat"} <= methods
    assert golden > 0.5  # the dummy's scores lean towards the gold labels its demos show
    assert {spec.backend for spec, _, _ in BUILT} == {"dummy"}


def test_the_registry_and_config_load_no_model_library():
    """Naming, validating and asking about backends imports neither torch, transformers nor vLLM
    (their records name their functions as strings, imported when a model loads)."""
    import subprocess
    import sys

    code = (
        "import sys; from persona_icm import backends; from persona_icm.config import ModelSpec;"
        "import persona_icm.scoring, persona_icm.preflight;"
        "specs = [ModelSpec(backend=b) for b in backends.names()];"
        "print([backends.in_process(s.backend) for s in specs], [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[True, False, False, True] []"
