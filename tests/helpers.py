"""Helpers shared by several test files and the measurement scripts.

- `StubServer` (and reply builders): a STUB of an OpenAI-compatible API, no model behind it: a
  local HTTP server speaking the /v1/completions and /v1/chat/completions wire format that replays
  scripted replies (log-probs, 429/500 errors, slow answers, replies without logprobs, errors
  whose body echoes the request's headers as some proxies do). A real hosted API cannot be
  reached from the test machine.
- `reference_scores`: the straightforward scoring path (one prompt, full forward, log_softmax).
- `hold`: a second process holding a DuckDB file's lock.
- `deployment_runs`, `flow_runs_named`, `icm_task_states`, `engine_starts`: what a Prefect server
  recorded (flow runs of a deployment or of a flow, the icm-search task runs of some flow runs,
  the model loads logged by tasks/scorers.py).
- `free_port`, `local_script`, `kill_worker_of`: scripts/prefect_local.sh on a port and state folder of
  a test's own, and a lost machine (a worker SIGKILLed with the flow run it started).
- `results_alive_at_each_store`: how many countries' results the experiment flow's process holds each
  time it stores one (the parent stays light).
- `serverless_env`, `start_cli_run`: `persona-icm run` in a new process with no Prefect server
  configured, as on a user's machine (it starts Prefect's temporary server).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from persona_icm.prompts import PromptEncoder

ROOT = Path(__file__).resolve().parent.parent


def completion_reply(top: dict[str, float] | None, cached: int | None = 3) -> dict:
    logprobs = None if top is None else {"tokens": [" True"], "token_logprobs": [-0.1], "top_logprobs": [top]}
    usage = {"prompt_tokens": 42, "completion_tokens": 1}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"object": "text_completion", "choices": [{"index": 0, "text": " True", "logprobs": logprobs}], "usage": usage}


def chat_reply(top: dict[str, float]) -> dict:
    entries = [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in top.items()]
    content = [{"token": entries[0]["token"], "logprob": entries[0]["logprob"], "top_logprobs": entries}]
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "True"}, "logprobs": {"content": content}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 1},
    }


def echo_headers(status: int, body: dict, headers: dict) -> tuple[int, dict]:
    """An error reply that quotes the request's headers (the API key included), as some proxies
    do: as a JSON object and as raw header lines in the message."""
    lines = "\n".join(f"{k}: {v}" for k, v in headers.items())
    return (status, {"error": {"message": f"HTTP {status} for request with headers:\n{lines}", "request_headers": headers}})


class StubServer:
    """Scripted OpenAI-compatible stub. `script` items: (status, json body), ("sleep", seconds, body),
    ("echo", status) (echo_headers), or a callable of the request body returning one of these."""

    def __init__(self):
        self.script: list = []
        self.default = None
        self.requests: list[tuple[str, dict, dict]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((self.path, body, dict(self.headers)))
                step = stub.script.pop(0) if stub.script else stub.default
                if callable(step):
                    step = step(body)
                if step[0] == "sleep":
                    time.sleep(step[1])
                    step = (200, step[2])
                elif step[0] == "echo":
                    step = echo_headers(step[1], body, dict(self.headers))
                status, payload = step
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up: that is the scripted fault

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


GOOD = (200, completion_reply({" True": -0.4, " False": -1.5, " Yes": -3.0}))


def forced_reply(values: dict[int, float]):
    """Stub reply of a vLLM server for one allowed_token_ids request: the forced token's log-prob."""

    def reply(body):
        (candidate,) = body["allowed_token_ids"]
        out = completion_reply({"x": values[candidate]})
        out["choices"][0]["logprobs"]["token_logprobs"] = [values[candidate]]
        return (200, out)

    return reply


class ModelListingStub(StubServer):
    """The stub plus GET /v1/models listing `served`."""

    def __init__(self, served: list[str]):
        super().__init__()
        served_json = json.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in served]}).encode()

        def do_GET(handler):  # noqa: N802
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(served_json)))
            handler.end_headers()
            handler.wfile.write(served_json)

        self.httpd.RequestHandlerClass.do_GET = do_GET


def reference_scores(model, tokenizer, requests):
    """The straightforward path: one prompt at a time, full forward, log_softmax of the last logits."""
    import torch

    out = []
    for r in requests:
        enc = PromptEncoder(tokenizer, r.kind)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([enc.encode(r)])).logits[0, -1]
        lp = torch.log_softmax(logits.double(), -1)
        out.append(float(lp[enc.true_id] - lp[enc.false_id]))
    return out


HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold(path: Path, seconds: float) -> subprocess.Popen:
    """A process that opens `path` read-write (taking DuckDB's lock) for `seconds`, then exits."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def all_pages(read, page: int = 200, **filters) -> list:
    """Every row of a Prefect client read (`read_flow_runs`, `read_task_runs`): the server returns 200 at most per call."""
    rows: list = []
    while True:
        got = read(**filters, limit=page, offset=len(rows))
        rows += got
        if len(got) < page:
            return rows


def deployment_runs(client, deployment: str) -> list:
    """The flow runs of `deployment` ("flow/deployment") on the client's server."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    dep = client.read_deployment_by_name(deployment)
    return all_pages(client.read_flow_runs, deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))


def flow_runs_named(client, flow: str) -> list:
    """The flow runs of flow `flow` on the client's server (subflows included)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    return all_pages(client.read_flow_runs, flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])))


def engine_starts(client, flow_run_ids: list) -> list[str]:
    """The `engine start: ...` log lines (tasks/scorers.py: one per in-process model loaded) of the flow runs."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from tasks.scorers import ENGINE_START

    lines, offset = [], 0
    while True:
        page = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)), limit=200, offset=offset)
        lines += [log.message for log in page if log.message.startswith(ENGINE_START + ":")]
        if len(page) < 200:
            return lines
        offset += 200


def icm_task_states(client, flow_run_ids: list) -> list[str]:
    """Sorted state names of the icm-search task runs in the flow runs `flow_run_ids`."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="icm-search")),
                                 flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)))
    return sorted(r.state.name for r in runs)


def results_alive_at_each_store(monkeypatch) -> list[int]:
    """Make the experiment flow count the CountryResult objects alive in this process (after a garbage
    collection) each time it stores a country, leaving out those alive before this call (an earlier
    test's); returns the list the counts go into."""
    import gc
    import weakref

    import flows.experiment as experiment
    from flows.country import CountryResult

    def results() -> list:
        gc.collect()
        return [o for o in gc.get_objects() if isinstance(o, CountryResult)]

    earlier = [weakref.ref(o) for o in results()]
    counts: list[int] = []
    store = experiment.persist_country

    def counting_store(*args, **kwargs):
        still_alive = {id(ref()) for ref in earlier if ref() is not None}
        counts.append(sum(id(o) not in still_alive for o in results()))
        return store(*args, **kwargs)

    monkeypatch.setattr(experiment, "persist_country", counting_store)
    return counts


def serverless_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a `persona-icm run` on a user's machine: no Prefect server, no startup
    limit of our own (CI sets one), PREFECT_HOME, result storage and TMPDIR (where the run's
    temporary Prefect folder goes) under `tmp_path`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PERSONA_ICM_STORAGE", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PERSONA_ICM_RESULTS=str(tmp_path / "results"),
               TMPDIR=str(tmp_path / "tmp"), PYTHONPATH=str(ROOT), TQDM_DISABLE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def start_cli_run(env: dict[str, str], warehouse: Path, goqa: Path, sets: dict, log: Path, preset: str = "smoke",
                  **popen) -> subprocess.Popen:
    """`python -m flows.cli --warehouse W run --preset PRESET --goqa-path G --set k=json(v)...` in the
    folder above the warehouse's, stdout and stderr into `log`."""
    command = [sys.executable, "-m", "flows.cli", "--warehouse", str(warehouse), "run", "--preset", preset,
               "--goqa-path", str(goqa)]
    for key, value in sets.items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    return subprocess.Popen(command, cwd=warehouse.parent.parent, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, **popen)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_script(*args: str, env: dict[str, str], timeout: float = 600) -> str:
    """`bash scripts/prefect_local.sh ARGS` in the checkout; its stdout (asserts it succeeded)."""
    done = subprocess.run(["bash", "scripts/prefect_local.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect_local.sh {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def kill_worker_of(run) -> None:
    """SIGKILL the flow run's process and the worker that started it (its machine is lost)."""
    import psutil

    def runs_it(p: psutil.Process) -> bool:
        try:
            return p.environ().get("PREFECT__FLOW_RUN_ID") == str(run.id)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            return False

    flow_process = next(p for p in psutil.process_iter() if runs_it(p) and runs_it(p.parent()) is False)
    worker = flow_process.parent()
    for p in [flow_process, *flow_process.children(recursive=True), worker]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def wait_until(what: str, condition, timeout: float, poll: float = 2.0):
    """`condition()`'s first truthy value, polled every `poll` s; an AssertionError naming `what` past `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
