"""The API key is written nowhere when the endpoint fails mid-run.

`persona-icm run` subprocesses (the session's Prefect test server; PREFECT_HOME,
PERSONA_ICM_STORAGE and the warehouse in temporary folders) score with the openai backend against
the STUB OpenAI-compatible server of tests/helpers.py (a hosted API cannot be reached from the
test machine). It answers the preflight probes and then, mid-run, 400 (first search request), 401
(a key revoked after a few search requests) or 403 (the chat baseline, after the search and the
evaluation), each with a body that echoes the request's headers, the key included. Afterwards the
key must be in none of: the runs' stdout/stderr, the Prefect database (its SQLite files: logs,
states), PREFECT_HOME, PERSONA_ICM_STORAGE, the warehouse; read raw, with base64 runs decoded, and
searched for the key's base64 at each of the three byte alignments (Prefect stores pickles as
base64, wrapped every 76 characters).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-leakcheck-9Qm2Zx7Lp4Rt8Wv1"
BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{24,}={0,2}")


def key_encodings(key: str) -> list[bytes]:
    """The key as bytes, and the part of its base64 that does not depend on the neighbouring bytes,
    for each of the three alignments it can have in a longer base64 text."""
    raw = key.encode()
    out = [raw]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        out.append(encoded[4 if shift else 0 : -4])
    return out


def places_holding(key: str, texts: dict[str, bytes]) -> list[str]:
    """Names of the texts that hold the key: raw, as base64 (any alignment, line breaks and JSON
    "\\n" escapes removed), or inside a decoded base64 run."""
    needles = key_encodings(key)
    found = []
    for name, data in texts.items():
        flat = data.replace(b"\\n", b"").replace(b"\n", b"")
        if any(n in data or n in flat for n in needles):
            found.append(name)
            continue
        for run in BASE64_RUN.findall(flat):
            decoded = b"".join(base64.b64decode(run[i:len(run) - (len(run) - i) % 4], validate=False)
                               for i in range(4))
            if needles[0] in decoded:
                found.append(name)
                break
    return found


def files_under(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_scanner_finds_the_key_in_each_form_prefect_stores(tmp_path):
    """Positive control of places_holding: a cloudpickled object holding the key, as Prefect's
    pickle serializer stores it (base64, wrapped lines, in JSON), at every offset."""
    import cloudpickle

    pickled = base64.encodebytes(cloudpickle.dumps({"headers": {"Authorization": f"Bearer {KEY}"}}))
    texts = {f"json-{pad}": json.dumps({"pad": "x" * pad, "data": pickled.decode()}).encode() for pad in range(3)}
    texts |= {f"b64-{pad}": base64.b64encode(b"y" * pad + KEY.encode() + b"z") for pad in range(3)}
    texts |= {"raw": f"error: {KEY}".encode(), "clean": json.dumps({"data": "Bearer [redacted]"}).encode()}
    assert places_holding(KEY, texts) == [name for name in texts if name != "clean"]


class MidRunFailure:
    """Stub replies: good log-probs for the first `base_ok` completions requests and `chat_ok` chat
    requests, then ("echo", status): an error whose body quotes the request's headers."""

    def __init__(self, status: int, base_ok: int, chat_ok: int):
        from tests.helpers import GOOD, chat_reply

        self.status, self.limits = status, {"base": base_ok, "chat": chat_ok}
        self.counts = {"base": itertools.count(1), "chat": itertools.count(1)}
        self.good = {"base": GOOD, "chat": (200, chat_reply({"True": -0.4, "False": -1.5, "Yes": -3.0}))}

    def __call__(self, body: dict):
        kind = "chat" if "messages" in body else "base"
        return self.good[kind] if next(self.counts[kind]) <= self.limits[kind] else ("echo", self.status)


@pytest.mark.slow
def test_an_endpoint_failing_mid_run_leaves_the_key_nowhere(harness, tmp_path):
    from prefect.settings import get_current_settings

    from persona_icm.warehouse import open_warehouse
    from tests.goqa_fixtures import make_rows, write_goqa
    from tests.helpers import StubServer

    goqa = write_goqa(tmp_path / "goqa.csv", make_rows(16, 2, ["France"]))
    home, storage, warehouse = tmp_path / "prefect-home", tmp_path / "storage", tmp_path / "warehouse" / "wh.duckdb"
    url = get_current_settings().server.database.connection_url
    database = Path(url.get_secret_value().split(":///", 1)[1]).parent  # the test server's SQLite files
    env = {k: v for k, v in os.environ.items() if k not in ("PERSONA_ICM_RESULTS", "PERSONA_ICM_STORAGE")}
    env.update(PREFECT_API_URL=harness, PREFECT_HOME=str(home), PERSONA_ICM_STORAGE=str(storage), LEAK_TEST_KEY=KEY,
               PYTHONPATH=str(ROOT), PREFECT_LOGGING_EXTRA_LOGGERS="persona_icm", TQDM_DISABLE="1", COLUMNS="2000")
    server = StubServer()
    model = {"backend": "openai", "openai": {"base_url": server.url, "api_key_env": "LEAK_TEST_KEY", "max_attempts": 2,
                                             "backoff_seconds": 0.01}}
    sets = {
        "data.countries": ["France"], "data.train_cap": 8, "data.test_cap": 4,
        "base_model": {**model, "name": "stub-base"}, "chat_model": {**model, "name": "stub-chat"},
        "icm.num_seed": 4, "icm.iterations": 4, "icm.checkpoint_every": 2,
        "eval.eval_repeats": 1, "eval.demo_sizes": [2], "eval.bootstrap_samples": 100,
    }
    cases = {  # status: (good base requests, good chat requests, methods); each model is probed twice
        400: (2, 2, ["icm", "zero_shot_base"]),  # before Prefect starts and in task check-inputs
        401: (7, 2, ["icm", "zero_shot_base"]),
        403: (10**6, 2, ["icm", "zero_shot_base", "zero_shot_chat"]),
    }
    outputs = {}
    try:
        for status, (base_ok, chat_ok, methods) in cases.items():
            server.requests.clear()
            server.default = MidRunFailure(status, base_ok, chat_ok)
            command = [sys.executable, "-m", "flows.cli", "--warehouse", str(warehouse), "run", "--preset", "smoke",
                       "--goqa-path", str(goqa)]
            for key, value in {**sets, "eval.methods": methods}.items():
                command += ["--set", f"{key}={json.dumps(value)}"]
            done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, timeout=900)
            outputs[status] = (done.returncode, done.stdout, done.stderr, len(server.requests))
    finally:
        server.close()

    texts = {f"stdout {s}": out for s, (_, out, _, _) in outputs.items()}
    texts |= {f"stderr {s}": err for s, (_, _, err, _) in outputs.items()}
    texts |= files_under(home, storage, warehouse.parent, database)
    tails = "\n".join(f"HTTP {s}: exit {code}\n{(out + err).decode()[-2500:]}" for s, (code, out, err, _) in outputs.items())
    assert any("/results/" in name for name in texts), f"no result was persisted: the scan would prove nothing\n{tails}"
    leaks = places_holding(KEY, texts)
    assert leaks == [], "the key is in:\n" + "\n".join(leaks)

    stored = files_under(home / "storage", storage / "results")
    assert len(stored) >= 6 and [json.loads(data) and name for name, data in stored.items()] == list(stored)  # no pickle

    for status, (code, out, err, n_requests) in outputs.items():
        output = (out + err).decode()
        assert code == 1, output[-3000:]
        assert n_requests > cases[status][0 if status != 403 else 1], output[-3000:]  # it failed mid-run
        assert f"error: run failed: EndpointError: {server.url}/" in output and f"returned HTTP {status}: " in output
        assert "Bearer [redacted]" in output  # the echoed headers were quoted, redacted
    with open_warehouse(warehouse, read_only=True) as wh:
        assert set(wh.sql("SELECT status FROM runs")["status"]) == {"failed"}
