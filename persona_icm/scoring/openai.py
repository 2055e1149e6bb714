"""OpenAI-compatible endpoints: /v1/completions (base prompts) and /v1/chat/completions (chat prompts).

Exactness. An API returns log-probs of the top-k next tokens, not of arbitrary tokens. Two modes:

- `top_logprobs` (any OpenAI-compatible server): request the top `top_logprobs` tokens
  (completions `logprobs=k`, chat `logprobs=true, top_logprobs=k`) and read " True"/" False"
  (chat: "True"/"False") from that list. Each value is the model's exact log-prob for that
  token; but when a candidate is not among the top k its log-prob is unknown and we raise
  `CandidateNotReturned` instead of guessing (the fork silently scored it as "False").
  Candidates are matched by their decoded text, so a server whose tokenizer splits " True"
  into several tokens will also raise.
- `allowed_token_ids` (vLLM's server): per prompt, two requests restricted to one candidate id
  each (`allowed_token_ids=[id]`, `logprobs=1`); the sampled token is then the candidate and its
  reported log-prob is vLLM's raw full-vocabulary log-softmax (default
  `logprobs_mode=raw_logprobs`), exact for every candidate. Prompts are sent as token ids from
  the local tokenizer (`tokenizer`) to /completions, so the server sees exactly the hf backend's
  tokens; a chat prompt goes there too, as the chat template's tokens (its own BOS, once).
  A server started with processed log-probs reports 0.0 for a forced token: both candidates at
  exactly 0.0 raise `ProcessedLogprobs` (base.check_raw_pair), never a score of 0.

Before a run, `probe()` asks the server once: it answers, serves the model, and returns both
candidates (preflight calls it for every OpenAI-compatible model).

Retries: 429, 5xx, timeouts and connection errors are retried with exponential backoff and
jitter (tenacity); other HTTP errors fail at once with `EndpointError` (status, URL and the
server's message). When the retries are used up, `EndpointUnavailable` names the endpoint, the
attempts and the last failure. The API key is resolved in one place, `resolve_api_key`: given by the
caller (the flow reads a Prefect Secret block) or read from the environment variable named in the
spec; it lives only in the client's
Authorization header, never logged. No error holds or chains httpx's request (its headers carry
the key): every exception raised here is one of this module's, made of text, and every text quoted
from a response goes through persona_icm.redaction.redact first (the key, Authorization and
api-key values removed), since some servers and proxies echo the request's headers.
"""

from __future__ import annotations

import inspect
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import httpx
from pydantic import SecretStr
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from persona_icm.prompts import chat_messages, prompt_text
from persona_icm.redaction import redact
from persona_icm.scoring.base import CallLog, ScoreRequest, check_raw_pair, sum_or_none

CANDIDATE_TEXT = {"base": (" True", " False"), "chat": ("True", "False")}


class NoLogprobsError(RuntimeError):
    """The endpoint answered without log-probs (the server or model does not support them)."""


class EndpointUnavailable(RuntimeError):
    """Every attempt at a request failed with a retryable error (429, 5xx, timeout, connection)."""


class EndpointError(RuntimeError):
    """The endpoint answered with an HTTP error (status set), or a request failed in a way that is
    not retried. Holds the status, the URL and the redacted body as text; never the request, its
    headers or the key."""

    def __init__(self, message: str, status: int | None = None, url: str = "", body: str = ""):
        super().__init__(message)
        self.status, self.url, self.body = status, url, body

    @property
    def retryable(self) -> bool:
        return self.status is not None and (self.status == 429 or self.status >= 500)


class ModelNotServed(RuntimeError):
    """The endpoint answers but does not list the configured model."""


class CandidateNotReturned(RuntimeError):
    """A candidate token was not among the returned top-k log-probs, so its log-prob is unknown."""


class MissingApiKey(ValueError):
    """The environment variable that should hold the API key is not set."""


def resolve_api_key(given: str | None, env_var: str | None, base_url: str) -> str | None:
    """The API key for `base_url`: `given` (the flow passes a Prefect Secret block's value), else the
    value of the environment variable `env_var`, else None when no variable is named (a server
    without keys). MissingApiKey when the variable is named but not set; the key is never in a message."""
    if given is not None or not env_var:
        return given
    key = os.environ.get(env_var)
    if not key:
        raise MissingApiKey(f"environment variable {env_var} (the API key for {base_url}) is not set")
    return key


def scorer_from_spec(spec, api_key: str | None = None) -> OpenAIScorer:
    """The backend registry's factory (persona_icm/backends.py) for a ModelSpec with backend "openai";
    `api_key` wins over `openai.api_key_env` (resolve_api_key)."""
    api = spec.openai
    api_key = resolve_api_key(api_key, api.api_key_env, api.base_url)  # before loading a tokenizer
    tokenizer = None
    if api.mode == "allowed_token_ids":
        from transformers import AutoTokenizer

        from persona_icm.scoring.models import resolve

        tokenizer = AutoTokenizer.from_pretrained(resolve(api.tokenizer or spec.name))
    return OpenAIScorer(
        base_url=api.base_url,
        model=api.model or spec.name,
        api_key_env=api.api_key_env,
        api_key=api_key,
        mode=api.mode,
        top_logprobs=api.top_logprobs,
        tokenizer=tokenizer,
        timeout_seconds=api.timeout_seconds,
        max_attempts=api.max_attempts,
        backoff_seconds=api.backoff_seconds,
        max_concurrency=api.max_concurrency,
    )


def _retryable(err: BaseException) -> bool:
    if isinstance(err, EndpointError):
        return err.retryable
    return isinstance(err, httpx.TimeoutException | httpx.TransportError)


def _backoff(seconds: float) -> wait_exponential_jitter:
    # tenacity 9.2 renamed `initial` to `multiplier`
    first = "multiplier" if "multiplier" in inspect.signature(wait_exponential_jitter).parameters else "initial"
    return wait_exponential_jitter(**{first: seconds}, max=60 * seconds, jitter=seconds)


class OpenAIScorer(CallLog):
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        api_key: str | None = None,
        mode: Literal["top_logprobs", "allowed_token_ids"] = "top_logprobs",
        top_logprobs: int = 20,
        tokenizer=None,
        timeout_seconds: float = 60.0,
        max_attempts: int = 6,
        backoff_seconds: float = 1.0,
        max_concurrency: int = 8,
    ):
        super().__init__()
        headers = {}
        api_key = resolve_api_key(api_key, api_key_env, base_url)
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._api_key = SecretStr(api_key or "")
        self.model = model
        self.mode = mode
        self.top_logprobs = top_logprobs
        self.max_concurrency = max_concurrency
        self.tokenizer = tokenizer
        if mode == "allowed_token_ids" and tokenizer is None:
            raise ValueError("mode 'allowed_token_ids' sends token ids and needs the model's tokenizer")
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.max_attempts = max_attempts
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_seconds)
        self._post_retried = retry(
            retry=retry_if_exception(_retryable),
            wait=_backoff(backoff_seconds),
            stop=stop_after_attempt(max_attempts),
            reraise=True,
        )(self._post_once)

    def close(self) -> None:
        self.client.close()

    @property
    def prompts_per_call(self) -> int:
        """The requests in flight at once (max_concurrency)."""
        return self.max_concurrency

    def redacted(self, text: str, limit: int = 500) -> str:
        """`text` (quoted from a response) without the key or any credential header value, cut to `limit`."""
        return redact(text, [self._api_key.get_secret_value()])[:limit]

    def _http_error(self, response: httpx.Response, what: str = "") -> EndpointError:
        url = self.redacted(str(response.url))
        body = self.redacted(response.text)
        return EndpointError(f"{url} returned HTTP {response.status_code}{what}: {body}", response.status_code, url, body)

    def score(self, requests: list[ScoreRequest]) -> list[float]:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            results = list(pool.map(self._score_one, requests))
        prompt_tokens = sum(r[1] for r in results)
        cached = [r[2] for r in results]
        self.record(
            len(requests),
            prompt_tokens,
            sum_or_none(cached),
            time.perf_counter() - start,
        )
        return [r[0] for r in results]

    # -- one request ------------------------------------------------------------------------
    def _post(self, path: str, body: dict) -> dict:
        # The errors are raised after the `except` block, so that no httpx exception
        # (which holds the request and its Authorization header) is their __cause__ or __context__.
        url = f"{self.base_url}{path}"
        try:
            return self._post_retried(path, body)
        except EndpointError as err:
            if not err.retryable:
                raise
            failure = self._unavailable(url, f"HTTP {err.status}")
        except httpx.TimeoutException:
            failure = self._unavailable(url, f"no answer within {self.timeout_seconds:g} s")
        except httpx.TransportError as err:
            failure = self._unavailable(url, f"{type(err).__name__}: {self.redacted(str(err))}")
        except httpx.HTTPError as err:  # not retried: a bad URL, a redirect loop, a body that cannot be decoded
            failure = EndpointError(f"{url}: {type(err).__name__}: {self.redacted(str(err))}", url=url)
        raise failure

    def _unavailable(self, url: str, what: str) -> EndpointUnavailable:
        return EndpointUnavailable(
            f"{url} failed {self.max_attempts} attempts ({what}); check the server, or raise "
            "openai.timeout_seconds / openai.max_attempts"
        )

    def _post_once(self, path: str, body: dict) -> dict:
        response = self.client.post(path, json=body)
        if response.status_code >= 400:
            raise self._http_error(response)
        reply = _json_object(response)
        if not reply.get("choices"):
            raise NoLogprobsError(f"{self.base_url}{path} returned no choices: {self.redacted(response.text, 300)}")
        return reply

    def _score_one(self, request: ScoreRequest) -> tuple[float, int, int | None]:
        if self.mode == "allowed_token_ids":
            return self._score_allowed(request)
        true_text, false_text = CANDIDATE_TEXT[request.kind]
        if request.kind == "chat":
            body = {
                "model": self.model,
                "messages": chat_messages(request.query, self.prompt_layout()[1]),
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": True,
                "top_logprobs": self.top_logprobs,
            }
            reply = self._post("/chat/completions", body)
            top = _chat_top_logprobs(reply)
        else:
            body = {
                "model": self.model,
                "prompt": prompt_text(request, *self.prompt_layout()),
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": self.top_logprobs,
            }
            reply = self._post("/completions", body)
            top = _completion_top_logprobs(reply)
        missing = [t for t in (true_text, false_text) if t not in top]
        if missing:
            raise CandidateNotReturned(
                f"{missing} not among the top {self.top_logprobs} log-probs for query {request.query.claim_id} "
                f"(returned: {sorted(top, key=top.get, reverse=True)[:8]}...); raise top_logprobs or use "
                f"mode='allowed_token_ids' on a vLLM server"
            )
        prompt_tokens, cached = _usage(reply)
        check_raw_pair(top[true_text], top[false_text], f"{self.base_url} ({self.model}), query {request.query.claim_id}")
        return top[true_text] - top[false_text], prompt_tokens, cached

    def _score_allowed(self, request: ScoreRequest) -> tuple[float, int, int | None]:
        enc = self.encoder(request.kind)
        ids = enc.encode(request)
        values, prompt_tokens, cached = [], 0, []
        for candidate in (enc.true_id, enc.false_id):
            body = {
                "model": self.model,
                "prompt": ids,
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": 1,
                "allowed_token_ids": [candidate],
            }
            reply = self._post("/completions", body)
            values.append(_sampled_logprob(reply))
            n, c = _usage(reply)
            prompt_tokens += n
            cached.append(c)
        check_raw_pair(values[0], values[1], f"{self.base_url} ({self.model}), query {request.query.claim_id}")
        return values[0] - values[1], prompt_tokens, sum_or_none(cached)

    # -- preflight ----------------------------------------------------------------------------
    def probe(self, request: ScoreRequest) -> float:
        """One check before a run: the server answers, lists `self.model` under /models, and
        returns both candidates for `request` (raises with what is wrong otherwise)."""
        listing, failure = None, ""
        try:
            listing = self.client.get("/models")
        except httpx.HTTPError as err:
            failure = f"{type(err).__name__}: {self.redacted(str(err))}"
        if listing is None:
            raise EndpointUnavailable(f"{self.base_url}/models: no answer ({failure})")
        if listing.status_code == 200:
            served = [m.get("id") for m in (_json_object(listing).get("data") or []) if isinstance(m, dict)]
            if served and self.model not in served:
                served_text = self.redacted(str(served))
                raise ModelNotServed(f"{self.base_url} does not serve model {self.model!r} (it serves {served_text})")
        elif listing.status_code in (401, 403):
            raise self._http_error(listing, " (check the API key)")
        (value,) = self.score([request])
        self.calls.pop()  # the probe is not part of the run's accounting
        return value


def _json_object(response: httpx.Response) -> dict:
    """The response's JSON object, {} when it is not one (a JSONDecodeError would keep the body)."""
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _first_choice(reply: dict) -> dict:
    return reply["choices"][0]  # _post_once refused a reply without choices


def _completion_top_logprobs(reply: dict) -> dict[str, float]:
    logprobs = _first_choice(reply).get("logprobs")
    top = (logprobs or {}).get("top_logprobs") or []
    if not top or not top[0]:
        raise NoLogprobsError("the completions endpoint returned no top_logprobs; it does not support logprobs")
    return {k: float(v) for k, v in top[0].items()}


def _chat_top_logprobs(reply: dict) -> dict[str, float]:
    logprobs = _first_choice(reply).get("logprobs")
    content = (logprobs or {}).get("content") or []
    if not content or not content[0].get("top_logprobs"):
        raise NoLogprobsError("the chat endpoint returned no top_logprobs; this model/server does not support logprobs")
    out: dict[str, float] = {}
    for entry in content[0]["top_logprobs"]:
        out.setdefault(entry["token"], float(entry["logprob"]))
    return out


def _sampled_logprob(reply: dict) -> float:
    logprobs = _first_choice(reply).get("logprobs")
    values = (logprobs or {}).get("token_logprobs") or []
    if not values or values[0] is None:
        raise NoLogprobsError("the completions endpoint returned no token_logprobs")
    return float(values[0])


def _usage(reply: dict) -> tuple[int, int | None]:
    usage = reply.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return int(usage.get("prompt_tokens") or 0), details.get("cached_tokens")
