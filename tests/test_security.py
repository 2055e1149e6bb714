"""Security: no code execution from data, API keys never in logs, the local server on loopback only."""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["persona_icm", "tasks", "flows"]
FAKE_KEY = "sk-fake-4f1c9a7e0b2d"


# ------------------------------------------------------------------------------ no eval / pickle


def _call_name(node: ast.Call) -> str:
    func = node.func
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _kwarg(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value
    return None


def unsafe_calls(path: Path) -> list[str]:
    """Calls that run code or unpickle data: eval/exec/compile, pickle/marshal/shelve/dill loads,
    yaml.load without SafeLoader, torch.load without weights_only=True, shell=True, os.system,
    trust_remote_code=True; and imports of pickle-like modules."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where} import {n}" for n in names if n.split(".")[0] in {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"}]
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        last = name.rsplit(".", 1)[-1]
        if name in {"eval", "exec", "compile", "__import__", "os.system", "os.popen"}:
            found.append(f"{where} {name}()")
        elif last in {"loads", "load", "Unpickler"} and name.split(".")[0] in {"pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"}:
            found.append(f"{where} {name}()")
        elif name in {"yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"}:
            loader = _kwarg(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or "Safe" not in ast.unparse(loader):
                found.append(f"{where} {name}() without SafeLoader")
        elif name == "torch.load":
            weights_only = _kwarg(node, "weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"{where} torch.load() without weights_only=True")
        shell = _kwarg(node, "shell")
        if isinstance(shell, ast.Constant) and shell.value is True:
            found.append(f"{where} {name}(shell=True)")
        trc = _kwarg(node, "trust_remote_code")
        if trc is not None and not (isinstance(trc, ast.Constant) and trc.value is False):
            found.append(f"{where} {name}(trust_remote_code=...)")
    return found


def test_no_code_execution_or_unpickling_in_the_sources():
    files = [p for d in SOURCES for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20
    assert [hit for p in files for hit in unsafe_calls(p)] == []


def test_the_scanner_catches_each_pattern(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle, yaml, torch, subprocess, os\n"
        "eval('1'); exec('x = 1'); pickle.loads(b''); yaml.load(s); yaml.load(s, Loader=yaml.Loader)\n"
        "torch.load('w.pt'); torch.load('w.pt', weights_only=False); subprocess.run('ls', shell=True)\n"
        "os.system('ls'); AutoModel.from_pretrained('m', trust_remote_code=True)\n"
        "yaml.load(s, Loader=yaml.SafeLoader); torch.load('w.pt', weights_only=True); model.eval()\n"
    )
    hits = unsafe_calls(bad)
    assert len(hits) == 11, hits  # one per unsafe call and the pickle import; the last line is safe
    assert any("import pickle" in h for h in hits) and any("trust_remote_code" in h for h in hits)


def test_goqa_literals_are_parsed_never_executed(tmp_path, monkeypatch):
    """A GOQA cell holding code is a format error, and the code does not run."""
    from persona_icm import goqa
    from tests.goqa_fixtures import make_rows, write_goqa

    marker = tmp_path / "pwned"
    rows = make_rows(4, 0, ["France"])
    rows[0]["selections"] = f"defaultdict(<class 'list'>, __import__('pathlib').Path({str(marker)!r}).touch())"
    rows[1]["options"] = f"__import__('os').system('touch {marker}')"
    with pytest.raises(goqa.GoqaFormatError):
        goqa.read_goqa(write_goqa(tmp_path / "evil.csv", rows))
    assert not marker.exists()


# ------------------------------------------------------------------------------ API keys


def test_api_key_is_sent_but_never_logged_stored_or_in_errors(tmp_path, monkeypatch, caplog):
    """The OpenAI scorer against the local STUB server (tests/helpers.StubServer), with
    every logger (httpx, httpcore, tenacity, ours) at DEBUG."""
    from persona_icm.config import build_config
    from persona_icm.scoring import make_scorer
    from persona_icm.scoring.base import ScoreRequest
    from persona_icm.scoring.openai import EndpointUnavailable
    from tests.helpers import GOOD, StubServer
    from tests.tiny_model import make_claims

    monkeypatch.setenv("FAKE_PROVIDER_KEY", FAKE_KEY)
    server = StubServer()
    try:
        config = build_config("smoke", {"base_model": {
            "backend": "openai", "name": "stub-model",
            "openai": {"base_url": server.url, "api_key_env": "FAKE_PROVIDER_KEY", "backoff_seconds": 0.01, "max_attempts": 2},
        }})
        caplog.set_level(logging.DEBUG)
        scorer = make_scorer(config.base_model)
        claims = make_claims(3)
        server.script = [(500, {"error": {"message": "try later"}})]
        server.default = GOOD
        assert len(scorer.score([ScoreRequest(((claims[0], 1),), claims[1])])) == 1
        server.default = (503, {"error": {"message": "down"}})
        with pytest.raises(EndpointUnavailable) as failure:
            scorer.score([ScoreRequest((), claims[2])])
    finally:
        server.close()
    assert server.requests[0][2]["Authorization"] == f"Bearer {FAKE_KEY}"  # it was used
    assert "httpx" in caplog.text or "HTTP Request" in caplog.text  # the loggers did record the requests
    texts = {
        "logs": caplog.text,
        "error": f"{failure.value!r} {failure.value.__cause__!r}",
        "config": config.model_dump_json(),
        "scorer": repr(vars(scorer)),
        "headers": repr(scorer.client.headers),
    }
    assert {k: FAKE_KEY in v for k, v in texts.items()} == dict.fromkeys(texts, False)


@pytest.mark.slow
def test_flow_reads_the_key_from_a_prefect_secret_block_and_never_logs_it(harness, monkeypatch, caplog):
    """A flow scoring through tasks.common.scorer_for with `openai.api_key_secret`: the key comes
    from the Secret block (the env var is unset), reaches the STUB server, and appears in none of
    the flow run's logs (read back from the Prefect API) nor the captured log records."""
    from prefect import flow, get_run_logger
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    from persona_icm.config import ModelSpec
    from persona_icm.scoring.base import ScoreRequest
    from tasks.common import scorer_for
    from tests.helpers import GOOD, StubServer
    from tests.tiny_model import make_claims

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    Secret(value=FAKE_KEY).save("persona-icm-test-key", overwrite=True)
    server = StubServer()
    server.default = GOOD
    spec = ModelSpec(backend="openai", name="stub-model", openai={"base_url": server.url, "api_key_secret": "persona-icm-test-key"})

    @flow(name="score-with-secret", log_prints=True)
    def score_with_secret(spec_values: dict) -> list[float]:
        spec = ModelSpec.model_validate(spec_values)
        logging.getLogger("httpx").setLevel(logging.DEBUG)
        claims = make_claims(2)
        scores = scorer_for(spec).score([ScoreRequest(((claims[0], 1),), claims[1])])
        get_run_logger().info("scored with %s: %s", spec, scores)
        print("spec", spec.model_dump())
        return scores

    caplog.set_level(logging.DEBUG)
    try:
        state = score_with_secret(spec.model_dump(mode="json"), return_state=True)
    finally:
        server.close()
    assert state.is_completed(), state
    assert server.requests[0][2]["Authorization"] == f"Bearer {FAKE_KEY}"
    APILogWorker.drain_all(timeout=10)  # logs reach the API in background batches
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
        run = client.read_flow_run(state.state_details.flow_run_id)
    messages = "\n".join(log.message for log in logs)
    assert "scored with" in messages and "spec" in messages
    assert FAKE_KEY not in messages and FAKE_KEY not in caplog.text and FAKE_KEY not in repr(run.parameters)


def test_redact_removes_the_key_and_every_credential_header_value():
    from persona_icm.redaction import redact

    cases = {
        f"Authorization: Bearer {FAKE_KEY}": "Authorization: Bearer [redacted]",
        '{"authorization": "Bearer abc", "x": 1}': '{"authorization": "Bearer [redacted]", "x": 1}',
        "{'Authorization': 'Basic dXNlcjpwdw=='}": "{'Authorization': 'Basic [redacted]'}",
        '"{\\"Proxy-Authorization\\": \\"Bearer q\\"}"': '"{\\"Proxy-Authorization\\": \\"Bearer [redacted]\\"}"',
        "api-key: abc123\nx-api-key=k2; API_KEY=k3": "api-key: [redacted]\nx-api-key=[redacted]; API_KEY=[redacted]",
        "https://h/v1/completions?api_key=zzz&b=1": "https://h/v1/completions?api_key=[redacted]&b=1",
        "https://user:pw@h/v1": "https://user:[redacted]@h/v1",
        f"Incorrect API key provided: {FAKE_KEY}.": "Incorrect API key provided: [redacted].",
        "Authorization: Bearer [redacted]": "Authorization: Bearer [redacted]",  # redacting twice changes nothing
    }
    assert {text: redact(text, [FAKE_KEY, None, ""]) for text in cases} == cases


def _chain(error: BaseException) -> list[BaseException]:
    seen = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def _holds_no_key(error: BaseException) -> None:
    """Neither the error nor anything it chains is httpx's (whose request carries the headers),
    and the key is in none of their texts or pickles (raw or base64, as Prefect stores them)."""
    import base64

    import cloudpickle

    for link in _chain(error):
        assert not type(link).__module__.startswith(("httpx", "httpcore", "tenacity")), link
        pickled = cloudpickle.dumps(link)
        assert FAKE_KEY.encode() not in pickled and FAKE_KEY.encode() not in base64.decodebytes(base64.encodebytes(pickled))
        assert FAKE_KEY not in f"{link} {link!r} {vars(link)}"
        assert b"Bearer" not in pickled or b"Bearer [redacted]" in pickled


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_an_http_error_is_endpoint_error_with_status_url_and_redacted_body(status):
    """The STUB server (tests/helpers.StubServer) answers with a body that echoes the request's
    headers, the key included."""
    from persona_icm.scoring.base import ScoreRequest
    from persona_icm.scoring.openai import EndpointError, OpenAIScorer
    from tasks.common import retry_helps
    from tests.helpers import StubServer
    from tests.tiny_model import make_claims

    server = StubServer()
    server.default = ("echo", status)
    try:
        scorer = OpenAIScorer(server.url, "stub-model", api_key_env=None, api_key=FAKE_KEY, backoff_seconds=0.01)
        with pytest.raises(EndpointError) as failure:
            scorer.score([ScoreRequest((), make_claims(1)[0])])
    finally:
        server.close()
    assert len(server.requests) == 1 and server.requests[0][2]["Authorization"] == f"Bearer {FAKE_KEY}"
    error = failure.value
    assert (error.status, error.url) == (status, f"{server.url}/completions")
    assert str(error).startswith(f"{server.url}/completions returned HTTP {status}: ")
    assert "Authorization: Bearer [redacted]" in error.body and '"Authorization": "Bearer [redacted]"' in error.body
    _holds_no_key(error)

    class Failed:  # a Prefect state whose result() raises the error
        def result(self):
            raise error

    assert retry_helps(None, None, Failed()) is False  # waiting does not fix a 4xx


def test_no_other_endpoint_error_holds_the_key(monkeypatch):
    """Retries used up (503), a 401 from the model listing, a 200 without choices: each echoes the
    headers; the errors name what happened and hold no key."""
    from persona_icm.scoring.base import ScoreRequest
    from persona_icm.scoring.openai import (
        EndpointError,
        EndpointUnavailable,
        NoLogprobsError,
        OpenAIScorer,
    )
    from tests.helpers import StubServer, echo_headers
    from tests.tiny_model import make_claims

    server = StubServer()
    query = ScoreRequest((), make_claims(1)[0])

    def listing_401(handler):
        status, body = echo_headers(401, {}, dict(handler.headers))
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    server.httpd.RequestHandlerClass.do_GET = listing_401
    try:
        scorer = OpenAIScorer(server.url, "stub-model", api_key_env=None, api_key=FAKE_KEY, backoff_seconds=0.01,
                              max_attempts=2)
        server.default = ("echo", 503)
        with pytest.raises(EndpointUnavailable, match=r"/completions failed 2 attempts \(HTTP 503\)") as unavailable:
            scorer.score([query])
        with pytest.raises(EndpointError, match=r"/models returned HTTP 401 \(check the API key\): .*\[redacted\]") as listing:
            scorer.probe(query)
        server.default = lambda body: (200, {"object": "text_completion", "echo": {"api-key": FAKE_KEY}})
        with pytest.raises(NoLogprobsError, match="returned no choices") as no_choices:
            scorer.score([query])
    finally:
        server.close()
    for error in (unavailable.value, listing.value, no_choices.value):
        _holds_no_key(error)


def test_missing_secret_block_is_a_clear_error(monkeypatch):
    """tasks.common.api_key_from_secret with Secret.load replaced by a STUB that fails as Prefect does."""
    from prefect.blocks.system import Secret

    from persona_icm.config import ModelSpec
    from tasks.common import api_key_from_secret

    def no_block(name, *args, **kwargs):
        raise ValueError(f"Unable to find block document named {name} for block type secret")

    monkeypatch.setattr(Secret, "load", no_block)
    spec = ModelSpec(backend="openai", name="m", openai={"api_key_secret": "nope"})
    with pytest.raises(ValueError, match=r"Prefect Secret block 'nope' \(openai.api_key_secret\)"):
        api_key_from_secret(spec)
    assert api_key_from_secret(ModelSpec(backend="openai", name="m")) is None


# ------------------------------------------------------------------------------ local server


def _fake_bin(bin_dir: Path, record: Path) -> None:
    """STUB `prefect` and `python` executables: they record how the script calls them (no server)."""
    bin_dir.mkdir()
    (bin_dir / "prefect").write_text(
        "#!/bin/sh\n"
        f'echo "prefect $* | PREFECT_SERVER_API_HOST=$PREFECT_SERVER_API_HOST PREFECT_API_URL=$PREFECT_API_URL" >> {record}\n'
        '[ "$1" = server ] && exec sleep 60\n'  # a server stays up until `prefect_local.sh stop`
        "exit 0\n"
    )
    # `healthy` answers once the server was started, so the script's wait loop ends
    (bin_dir / "python").write_text(f"#!/bin/sh\ngrep -q 'server start' {record} 2>/dev/null\n")
    for exe in ("prefect", "python"):
        (bin_dir / exe).chmod(0o755)


def test_prefect_local_script_starts_the_server_on_loopback_only(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "prefect_local.sh", checkout / "scripts" / "prefect_local.sh")
    record = tmp_path / "calls.log"
    _fake_bin(tmp_path / "bin", record)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(BIN=str(tmp_path / "bin"), PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    script = ["bash", str(checkout / "scripts" / "prefect_local.sh")]
    try:
        done = subprocess.run([*script, "up"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        for _ in range(100):  # workers are started in the background
            calls = record.read_text().splitlines()
            if any("worker start" in c for c in calls):
                break
            time.sleep(0.1)
    finally:
        subprocess.run([*script, "stop"], env=env, capture_output=True, timeout=60)
    assert not (checkout / ".prefect" / "server.pid").exists()
    server = [c for c in calls if " server start " in f" {c} "]
    assert len(server) == 1 and "--host 127.0.0.1 " in server[0]
    assert all("PREFECT_SERVER_API_HOST=127.0.0.1 " in c and "PREFECT_API_URL=http://127.0.0.1:" in c for c in calls)
    for path in [ROOT / "scripts" / "prefect_local.sh", ROOT / "Makefile", ROOT / "prefect.yaml"]:
        assert "0.0.0.0" not in path.read_text(), path
