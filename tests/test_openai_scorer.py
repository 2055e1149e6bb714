"""The OpenAI-compatible backend against a local stub server.

`StubServer` (tests/helpers.py) is a STUB of an OpenAI-compatible API (no model behind it): a
local HTTP server that speaks the /v1/completions and /v1/chat/completions wire format and
replays scripted replies. A real hosted API cannot be reached from the test machine.
"""

import pytest

from persona_icm.prompts import PromptEncoder, prompt_text
from persona_icm.scoring.base import ScoreRequest
from persona_icm.scoring.openai import (
    CandidateNotReturned,
    EndpointError,
    EndpointUnavailable,
    NoLogprobsError,
    OpenAIScorer,
)
from tests.helpers import (
    GOOD,
    ModelListingStub,
    StubServer,
    chat_reply,
    completion_reply,
    forced_reply,
)
from tests.tiny_model import build_tokenizer, make_claims


@pytest.fixture
def server():
    s = StubServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def claims():
    return make_claims(6)


def scorer_for(server, **kw):
    kw.setdefault("api_key_env", None)
    kw.setdefault("backoff_seconds", 0.01)
    return OpenAIScorer(server.url, "stub-model", **kw)


def test_completion_score_and_wire_format(server, claims, monkeypatch):
    monkeypatch.setenv("STUB_KEY", "sk-test-123")
    server.default = GOOD
    request = ScoreRequest(((claims[0], 1), (claims[1], 0)), claims[2])
    scorer = scorer_for(server, api_key_env="STUB_KEY", top_logprobs=5)
    assert scorer.score([request, request]) == pytest.approx([1.1, 1.1])
    path, body, headers = server.requests[0]
    assert path == "/v1/completions"
    assert body["prompt"] == prompt_text(request) and body["logprobs"] == 5 and body["max_tokens"] == 1
    assert body["temperature"] == 0.0 and body["model"] == "stub-model"
    assert headers["Authorization"] == "Bearer sk-test-123"
    call = scorer.calls[-1]
    assert (call.n_prompts, call.prompt_tokens, call.cached_tokens) == (2, 84, 6)
    assert "sk-test-123" not in repr(scorer.__dict__.get("calls"))


def test_chat_score_uses_chat_endpoint(server, claims):
    server.default = (200, chat_reply({"True": -2.0, "False": -0.25}))
    scorer = scorer_for(server)
    assert scorer.score([ScoreRequest((), claims[3], "chat")]) == pytest.approx([-1.75])
    path, body, _ = server.requests[0]
    assert path == "/v1/chat/completions" and body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["messages"][0]["role"] == "user" and claims[3].question in body["messages"][0]["content"]
    assert scorer.calls[-1].cached_tokens is None  # the reply did not report cached tokens


@pytest.mark.parametrize("status", [429, 500, 503])
def test_rate_limit_and_server_errors_are_retried(server, claims, status):
    server.script = [(status, {"error": {"message": "slow down"}}), (status, {"error": {}})]
    server.default = GOOD
    assert scorer_for(server).score([ScoreRequest((), claims[0])]) == pytest.approx([1.1])
    assert len(server.requests) == 3


def test_timeout_is_retried_then_gives_up(server, claims):
    server.script = [("sleep", 0.6, GOOD[1])]
    server.default = GOOD
    assert scorer_for(server, timeout_seconds=0.2).score([ScoreRequest((), claims[0])]) == pytest.approx([1.1])
    assert len(server.requests) == 2
    server.script = [("sleep", 0.6, GOOD[1])] * 2
    with pytest.raises(EndpointUnavailable, match=r"/v1/completions failed 2 attempts \(no answer within 0.2 s\).*timeout_seconds") as failure:
        scorer_for(server, timeout_seconds=0.2, max_attempts=2).score([ScoreRequest((), claims[0])])
    assert failure.value.__cause__ is None and failure.value.__context__ is None  # httpx's holds the request
    assert len(server.requests) == 4


def test_rate_limit_that_never_ends_gives_up_with_the_status(server, claims):
    server.default = (429, {"error": {"message": "rate limited"}})
    with pytest.raises(EndpointUnavailable, match=r"failed 3 attempts \(HTTP 429\)"):
        scorer_for(server, max_attempts=3).score([ScoreRequest((), claims[0])])
    assert len(server.requests) == 3


def test_unreachable_endpoint_is_retried_then_a_clear_error(claims):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scorer = OpenAIScorer(f"http://127.0.0.1:{port}/v1", "m", api_key_env=None, backoff_seconds=0.01, max_attempts=2)
    with pytest.raises(EndpointUnavailable, match=rf"127.0.0.1:{port}/v1/completions failed 2 attempts \(ConnectError"):
        scorer.score([ScoreRequest((), claims[0])])


def test_client_errors_are_not_retried(server, claims):
    server.default = (400, {"error": {"message": "model not found"}})
    with pytest.raises(EndpointError, match=r"/v1/completions returned HTTP 400: .*model not found") as failure:
        scorer_for(server).score([ScoreRequest((), claims[0])])
    assert len(server.requests) == 1
    assert (failure.value.status, failure.value.url) == (400, f"{server.url}/completions")


def test_no_logprobs_is_a_clear_error(server, claims):
    server.default = (200, completion_reply(None))
    with pytest.raises(NoLogprobsError, match="does not support logprobs"):
        scorer_for(server).score([ScoreRequest((), claims[0])])
    server.default = (200, {"choices": [{"message": {"content": "True"}, "logprobs": None}]})
    with pytest.raises(NoLogprobsError):
        scorer_for(server).score([ScoreRequest((), claims[0], "chat")])


def test_missing_candidate_raises_instead_of_guessing(server, claims):
    server.default = (200, completion_reply({" True": -0.1, " Yes": -2.5}))
    with pytest.raises(CandidateNotReturned, match="' False'"):
        scorer_for(server).score([ScoreRequest((), claims[0])])


def test_missing_api_key_names_the_variable(server, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ValueError, match="NO_SUCH_KEY_VAR"):
        OpenAIScorer(server.url, "m", api_key_env="NO_SUCH_KEY_VAR")


def test_allowed_token_ids_mode_sends_token_ids_and_reads_each_candidate(server, claims):
    tokenizer = build_tokenizer(add_bos=True)
    enc = PromptEncoder(tokenizer)
    values = {enc.true_id: -3.25, enc.false_id: -0.5}

    def reply(body):
        (candidate,) = body["allowed_token_ids"]
        out = completion_reply({"x": values[candidate]})
        out["choices"][0]["logprobs"]["token_logprobs"] = [values[candidate]]
        return (200, out)

    server.default = reply
    request = ScoreRequest(((claims[0], 1),), claims[1])
    scorer = scorer_for(server, mode="allowed_token_ids", tokenizer=tokenizer)
    assert scorer.score([request]) == pytest.approx([-2.75])
    bodies = [b for _, b, _ in server.requests]
    assert [b["allowed_token_ids"] for b in bodies] == [[enc.true_id], [enc.false_id]]
    assert all(b["prompt"] == enc.encode(request) for b in bodies)


def test_allowed_token_ids_mode_scores_chat_prompts_as_template_tokens_on_completions(server, claims):
    """The `full` deployment's chat baseline: a chat prompt in allowed_token_ids mode goes to
    /completions as the chat template's token ids, with exactly one BOS (the template's)."""
    tokenizer = build_tokenizer(add_bos=True)
    chat = PromptEncoder(tokenizer, "chat")
    server.default = forced_reply({chat.true_id: -0.25, chat.false_id: -2.0})
    request = ScoreRequest((), claims[2], "chat")
    scorer = scorer_for(server, mode="allowed_token_ids", tokenizer=tokenizer)
    assert scorer.score([request]) == pytest.approx([1.75])
    paths = [p for p, _, _ in server.requests]
    bodies = [b for _, b, _ in server.requests]
    assert paths == ["/v1/completions", "/v1/completions"]
    assert [b["allowed_token_ids"] for b in bodies] == [[chat.true_id], [chat.false_id]]
    ids = bodies[0]["prompt"]
    assert ids == chat.encode(request) and ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1


@pytest.mark.parametrize("mode", ["allowed_token_ids", "top_logprobs"])
def test_both_candidates_exactly_zero_is_an_error_not_a_score(server, claims, mode):
    """A server that reports processed log-probs gives 0.0 for each forced token."""
    from persona_icm.scoring.base import ProcessedLogprobs

    tokenizer = build_tokenizer(add_bos=True)
    enc = PromptEncoder(tokenizer)
    if mode == "allowed_token_ids":
        server.default = forced_reply({enc.true_id: 0.0, enc.false_id: 0.0})
    else:
        server.default = (200, completion_reply({" True": 0.0, " False": 0.0}))
    scorer = scorer_for(server, mode=mode, tokenizer=tokenizer)
    with pytest.raises(ProcessedLogprobs, match="exactly 0.0"):
        scorer.score([ScoreRequest((), claims[0])])


def test_probe_checks_model_listing_and_both_candidates(claims):
    from persona_icm.scoring.openai import ModelNotServed

    listing = ModelListingStub(["other-model"])
    try:
        listing.default = GOOD
        with pytest.raises(ModelNotServed, match="'stub-model'.*other-model"):
            scorer_for(listing).probe(ScoreRequest((), claims[0]))
    finally:
        listing.close()
    served = ModelListingStub(["stub-model"])
    try:
        served.default = GOOD
        scorer = scorer_for(served)
        assert scorer.probe(ScoreRequest((), claims[0])) == pytest.approx(1.1)
        assert scorer.calls == []  # the probe is not part of a run's accounting
        served.default = (200, completion_reply({" True": -0.4, " Yes": -1.0}))
        with pytest.raises(CandidateNotReturned):
            scorer.probe(ScoreRequest((), claims[0]))
    finally:
        served.close()
