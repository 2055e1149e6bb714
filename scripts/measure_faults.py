"""Inject backend and input faults and print what happened and how long recovery (or the error) took.

A measurement, not a test (the tests assert the behaviour; this prints the times). The OpenAI
endpoint is the local STUB server of tests/test_openai_scorer.py (no hosted API is reachable
here); the vLLM engine is a stub module whose LLM() fails the way an engine that cannot start
does. Retry settings are the config defaults (6 attempts, 1 s backoff) unless a row says otherwise.

    PYTHONPATH=. python scripts/measure_faults.py --goqa-path /path/to/global_opinions.csv
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from persona_icm.config import VllmEngineArgs  # noqa: E402
from persona_icm.scoring.base import ScoreRequest  # noqa: E402
from persona_icm.scoring.openai import OpenAIScorer  # noqa: E402
from persona_icm.tiny_model import make_claims  # noqa: E402
from tests.helpers import GOOD, StubServer, completion_reply  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    try:
        out = f"ok: {fn()}"
    except Exception as err:
        out = f"{type(err).__name__}: {str(err).splitlines()[0][:110]}"
    return out, time.perf_counter() - start


def openai_rows(claims) -> list[tuple[str, str, float]]:
    request = [ScoreRequest(((claims[0], 1),), claims[1])]
    cases = [
        ("endpoint 500, 500, then OK", [(500, {}), (500, {})], GOOD, {}),
        ("endpoint 429 x3, then OK", [(429, {})] * 3, GOOD, {}),
        ("endpoint times out once (timeout 2 s), then OK", [("sleep", 3, GOOD[1])], GOOD, {"timeout_seconds": 2}),
        ("endpoint always times out (timeout 1 s, 3 attempts)", [], ("sleep", 2, GOOD[1]), {"timeout_seconds": 1, "max_attempts": 3}),
        ("endpoint always 503 (6 attempts)", [], (503, {}), {}),
        ("endpoint returns no logprobs", [], (200, completion_reply(None)), {}),
    ]
    rows = []
    for name, script, default, kwargs in cases:
        server = StubServer()
        server.script, server.default = list(script), default
        try:
            scorer = OpenAIScorer(server.url, "stub", api_key_env=None, **kwargs)
            result, seconds = timed(lambda s=scorer: [round(x, 3) for x in s.score(request)])
            rows.append((name, f"{result} ({len(server.requests)} requests)", seconds))
        finally:
            server.close()
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scorer = OpenAIScorer(f"http://127.0.0.1:{port}/v1", "stub", api_key_env=None)
    rows.append(("endpoint unreachable (connection refused)", *timed(lambda: scorer.score(request))))
    return rows


def vllm_row() -> tuple[str, str, float]:
    from persona_icm.scoring.vllm import load_engine

    def failing_llm(**kwargs):
        raise ValueError("insufficient KV cache memory for max_model_len 131072")

    stub = types.ModuleType("vllm")
    stub.LLM = failing_llm
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = SimpleNamespace(is_cpu=lambda: False)
    sys.modules.update({"vllm": stub, "vllm.platforms": platforms})
    try:
        return ("vLLM engine fails to start", *timed(lambda: load_engine("/models/x", VllmEngineArgs(max_model_len=131072))))
    finally:
        del sys.modules["vllm"], sys.modules["vllm.platforms"]


def cli_rows(goqa: Path, tmp: Path) -> list[tuple[str, str, float]]:
    cases = [
        ("CLI: GOQA file missing", ["--goqa-path", str(tmp / "nope.csv")]),
        ("CLI: unknown country", ["--goqa-path", str(goqa), "--set", 'data.countries=["Atlantis"]']),
        ("CLI: alpha < 0", ["--goqa-path", str(goqa), "--set", "icm.alpha=-1"]),
        ("CLI: model not local, offline", ["--goqa-path", str(goqa), "--set", "base_model.name=org/none"]),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    rows = []
    for name, args in cases:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "--warehouse", str(tmp / "wh.duckdb"), "run", *args],
            capture_output=True, text=True, env=env, cwd=ROOT,
        )
        written = "warehouse written!" if (tmp / "wh.duckdb").exists() else "nothing written"
        rows.append((name, f"exit {done.returncode}, {written}: {done.stderr.strip()[:110]}", time.perf_counter() - start))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--goqa-path", type=Path, required=True)
    args = p.parse_args()
    import tempfile

    table = Table("fault injected", "what happened", "seconds to recovery / error")
    with tempfile.TemporaryDirectory() as tmp:
        rows = cli_rows(args.goqa_path.resolve(), Path(tmp)) + openai_rows(make_claims(3)) + [vllm_row()]
    for name, what, seconds in rows:
        table.add_row(name, what, f"{seconds:.2f}")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
