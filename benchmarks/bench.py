"""Benchmarks that print figures (never timed tests).

    python -m benchmarks.bench icm --preset seed [--country "United States"] [--csv PATH]

`icm`: model work of one ICM search on a seed-sized workload (about 124 training claims of one
real GOQA country: its training split, built by goqa.py/claims.py). Scores come from the synthetic
scorer (persona_icm/scoring/synthetic.py), made order-invariant so every variant follows the SAME
trajectory; every prompt is tokenised with the real offline SmolLM2 tokenizer (persona_icm.prompts)
and replayed through simulated prefix caches (persona_icm/kv_cache.py: 16-token blocks, chained
block hashes, vLLM v1's eviction and plain LRU; what is and is not modelled is printed).

  (a) fast engine, context in pool-entry order, its calls replayed in the order it sends them
      (scoring/vllm.py keeps it), and (a0) each call in one direction (before the alternation);
  (b) reference engine with the earlier code's prompt order (groups in claim-id order), one
      backend call per prompt;
  (c) lower bound: every distinct prompt the trajectory needs, through an unbounded cache
      (= the distinct 16-token prefix blocks, plus each prompt's partial last block);
  (d) lower bound for a cache of the column's size, for any order and any eviction policy.

A fully cached prompt still computes its last token (as vLLM does), so uncached >= 1 per prompt.
`--belady` adds (a)'s order under Belady's clairvoyant eviction.
"""

from __future__ import annotations

import argparse
import heapq
import os
import sys
import time
from pathlib import Path

from persona_icm.claims import Claim
from persona_icm.config import PRESET_NAMES, build_config
from persona_icm.kv_cache import PrefixCache
from persona_icm.scoring.base import call_totals
from persona_icm.scoring.models import load_tokenizer
from persona_icm.scoring.simulated import ENGINE_ORDER, PREFIX_ORDER, SimulatedBackend

SMOLLM2 = "smollm2-135m-instruct"


# -- workload -------------------------------------------------------------------------------

def goqa_train_claims(csv_path: Path, country: str, preset: str) -> list[Claim]:
    """The preset's training claims of one country, built by the project's own data pipeline
    (goqa.read_goqa -> claims.build_dataset, dataset "all" as in the fork's main table)."""
    from persona_icm.claims import dataset_from_file

    data = build_config(preset, {"data": {"countries": [country], "dataset": "all", "goqa_path": str(csv_path)}}).data
    return dataset_from_file(data)[1].country_split(country).train


# -- the orders a call's prompts are replayed in (persona_icm/scoring/simulated.py) ------------

ORDERS = {
    ENGINE_ORDER: "as the engine sends them",
    PREFIX_ORDER: "every call one way (the engine's order before the alternation)",
}


# -- bounds for a bounded cache ----------------------------------------------------------------

def bounded_cache_bound(trace, block: int, capacities: list[int], window: int) -> dict[int, int]:
    """A lower bound on uncached tokens for ANY order of each call's prompts and ANY eviction policy,
    with a cache of `capacity` tokens: over a run of consecutive calls, every block of their
    tries is computed at least once, except blocks cached when the run starts (at most
    capacity // block of them, and none that no earlier call had). Partial last blocks are always
    computed. The best split of the calls into runs of up to `window` calls (dynamic programming)."""
    tries = [{h for hashes, _ in call for h in hashes} for call in trace]
    partial = [sum(n - len(hashes) * block for hashes, n in call) for call in trace]
    fresh, seen = [], set()
    for trie in tries:
        fresh.append(len(trie - seen))
        seen |= trie
    runs = []  # runs[j]: (i, blocks in the union of calls i..j, of them fresh, partial tokens) for i = j, j-1, ...
    for j in range(len(tries)):
        union: set[int] = set()
        new = part = 0
        rows = []
        for i in range(j, max(-1, j - window), -1):
            union |= tries[i]
            new += fresh[i]
            part += partial[i]
            rows.append((i, len(union), new, part))
        runs.append(rows)
    bounds = {}
    for capacity in capacities:
        held = capacity // block
        best = [0] * (len(tries) + 1)
        for j, rows in enumerate(runs):
            best[j + 1] = max(best[i] + (new + max(0, size - new - held)) * block + part for i, size, new, part in rows)
        bounds[capacity] = best[-1]
    return bounds


def belady_uncached(trace, block: int, capacity: int) -> int:
    """Uncached tokens of the recorded order with Belady's eviction (drop the block used again
    farthest in the future): what clairvoyant eviction would achieve for the same prompt order."""
    accesses = [h for call in trace for hashes, _ in call for h in hashes]
    never = len(accesses)
    next_use, later = [never] * len(accesses), {}
    for t in range(len(accesses) - 1, -1, -1):
        next_use[t] = later.get(accesses[t], never)
        later[accesses[t]] = t
    held, heap, t, uncached = {}, [], 0, 0
    for call in trace:
        for hashes, n in call:
            hits, leading = 0, True
            cap = (n - 1) // block
            for h in hashes:
                leading = leading and h in held and hits < cap
                hits += leading
                held[h] = next_use[t]
                heapq.heappush(heap, (-next_use[t], h))
                while len(held) > capacity // block:
                    use, victim = heapq.heappop(heap)
                    if held.get(victim) == -use:
                        del held[victim]
                t += 1
            uncached += n - hits * block
    return uncached


# -- the icm benchmark -----------------------------------------------------------------------

SIMULATOR = """\
simulator (persona_icm/kv_cache.py): 16-token blocks under chained hashes; a prompt's hits are its leading
cached blocks, at most (tokens - 1) // 16 (its last token is computed). Eviction 'vllm' models vLLM 0.32's v1
block pool: physical blocks in a free queue; hits leave the queue; new blocks are popped from its head (a
cached one popped is evicted); a finished prompt's blocks go back tail first (hashed ones appended, so its
prefix is evicted last; the partial last block to the head). 'lru': cached hashes in LRU order, all of a
prompt's blocks most recent in prompt order. Not modelled: requests run one at a time (vLLM batches them:
running requests pin blocks, requests of one step share blocks as they are allocated, free order follows
finish order), no preemption, no chunked prefill; vLLM's null block is not counted in the capacity."""


def bench_icm(args: argparse.Namespace) -> None:
    from persona_icm.icm import TRAJECTORY_COLUMNS, run_icm
    from persona_icm.prompts import PromptEncoder
    from persona_icm.scoring.synthetic import SyntheticScorer

    claims = goqa_train_claims(args.csv, args.country, args.preset)
    config = build_config(args.preset).icm
    if args.iterations is not None:
        config = config.model_copy(update={"iterations": args.iterations})
    truth = {c.claim_id: c.gold for c in claims}
    claim_index = {c.claim_id: i for i, c in enumerate(claims)}
    t0 = time.perf_counter()
    encoder = PromptEncoder(load_tokenizer(SMOLLM2), "base")
    print(f"workload: {len(claims)} training claims ({len(claims) // 2} questions) of {args.country} from {args.csv.name}; "
          f"preset {args.preset}: K={config.iterations}, num_seed={config.num_seed}, alpha={config.alpha}; "
          f"tokenizer {SMOLLM2} ({time.perf_counter() - t0:.1f}s to load)")
    capacities = [c for c in args.cache_tokens if c is not None]
    columns = {f"{ev}@{c // 1024}k": (c, ev) for ev in ("vllm", "lru") for c in capacities} | {"inf": (None, "vllm")}
    print(SIMULATOR)

    def lanes(orders, evictions=("vllm", "lru")):
        return {o: {name: PrefixCache(args.block, c, ev) for name, (c, ev) in columns.items() if ev in evictions}
                for o in orders}

    def synthetic():
        return SyntheticScorer(truth, signal=args.signal, prior=args.prior, seed=args.scorer_seed, order_invariant=True)

    runs = {}
    plan = [("a", "fast", "entry", lanes(ORDERS)), ("b", "reference", "claim", lanes(["engine"], ("vllm",)))]
    for name, engine, order, caches in plan:
        backend = SimulatedBackend(synthetic(), encoder, args.block, caches, claim_index,
                                   lower_bound=name == "a", record=name == "a")
        cfg = config.model_copy(update={"engine": engine, "context_order": order})
        start = time.perf_counter()
        result = run_icm(claims, backend, cfg, show_progress=not args.quiet)
        runs[name] = (result, backend, time.perf_counter() - start)

    same = runs["a"][0].trace.select(TRAJECTORY_COLUMNS).equals(runs["b"][0].trace.select(TRAJECTORY_COLUMNS))
    res_a, back_a = runs["a"][0], runs["a"][1]
    print(f"trajectory: {res_a.counters.proposed} moves tried, {res_a.counters.accepted} accepted, final pool "
          f"{res_a.trace['pool_size'][-1]}, label accuracy vs gold {res_a.trace['train_accuracy'][-1]:.3f}; "
          f"(a) and (b) identical: {same}")
    start = time.perf_counter()
    bound = bounded_cache_bound(back_a.trace, args.block, capacities, args.bound_window)
    bound_seconds = time.perf_counter() - start
    print_table(runs, columns, bound, args)
    print_tries(back_a.trace, args.block, capacities, int(res_a.trace['pool_size'][-1]))
    if args.belady:
        for c in capacities:
            u = belady_uncached(back_a.trace, args.block, c)
            print(f"Belady eviction, order (a), {c:,} tokens: {u:,} uncached = {u / back_a.lower['uncached']:.3f} x (c)")
    print(f"\nbench wall time (synthetic scores; tokenising and cache simulation dominate): "
          f"(a) {runs['a'][2]:.1f}s, (b) {runs['b'][2]:.1f}s, bound {bound_seconds:.1f}s")
    if args.wall:
        wall_time_smoke(args)


def cell(value, spec: str) -> str:
    return f"{'-':>20}" if value is None else f"{value:>20{spec}}"


def print_table(runs, columns: dict, bound: dict[int, int], args: argparse.Namespace) -> None:
    back_a, back_b = runs["a"][1], runs["b"][1]
    low = back_a.lower

    def totals(backend):
        totals = call_totals(backend.calls)
        return totals.calls, totals.prompts, totals.prompt_tokens

    rows = [("(a) fast engine", *totals(back_a), back_a.uncached["engine"]),
            ("(a0) (a), calls one way", *totals(back_a), back_a.uncached["prefix"]),
            ("(b) reference, claim-id order", *totals(back_b), back_b.uncached["engine"]),
            ("(c) bound, unbounded cache", None, low["prompts"], low["tokens"], dict.fromkeys(columns, low["uncached"])),
            ("(d) bound, this cache", None, None, None,
             {name: bound[c] if c is not None else low["uncached"] for name, (c, _) in columns.items()})]
    header = f"{'':32}{'calls':>8}{'prompts':>9}{'prompt tokens':>15}" + "".join(f"{'uncached ' + n:>20}" for n in columns)
    print("\n" + header)
    for label, calls, prompts, tokens, uncached in rows:
        cells = [f"{x:>{w},}" if x is not None else f"{'-':>{w}}" for x, w in ((calls, 8), (prompts, 9), (tokens, 15))]
        print(f"{label:32}" + "".join(cells) + "".join(cell(uncached.get(n), ",") for n in columns))
    for label, row in (("(a)", rows[0]), ("(a0)", rows[1]), ("(d)", rows[4])):
        print(f"{label + ' / (c)':32}{'':32}" + "".join(cell(row[4][n] / low["uncached"], ".3f") for n in columns))
    b = back_b.uncached["engine"]
    print(f"{'(a) / (b)':32}{'':32}" + "".join(cell(back_a.uncached["engine"][n] / b[n] if n in b else None, ".3f")
                                              for n in columns))
    print("Rows: (a) the fast engine's calls in the order it sends them, which scoring/vllm.py keeps (one-labelling\n"
          "calls alternate the direction of their prefix-tree walk, a ConsistencyFix call walks opposite to the last\n"
          "one); (a0) the same calls each in ascending prefix order (the engine before the alternation); (c) every\n"
          "distinct block once; (d) no order and no eviction policy can do better with this cache\n"
          f"(runs of up to {args.bound_window} consecutive calls; see bounded_cache_bound).")


def print_tries(trace, block: int, capacities: list[int], pool_size: int) -> None:
    """Why a small cache cannot reach (c): one call's prefix trie against the capacity."""
    tries = [len({h for hashes, _ in call for h in hashes}) * block for call in trace]
    largest = max(range(len(trace)), key=lambda k: tries[k])
    evaluation = max(k for k, call in enumerate(trace) if 1 < len(call) <= pool_size)
    print(f"\nprefix trie of a call (its distinct full blocks): largest {tries[largest]:,} tokens ({len(trace[largest])} "
          f"prompts); the last single evaluation {tries[evaluation]:,} tokens ({len(trace[evaluation])} prompts); "
          + ", ".join(f"{sum(t > c for t in tries)} of {len(trace)} calls exceed {c:,}" for c in capacities) + ".")


def wall_time_smoke(args: argparse.Namespace) -> None:
    """Real CPU wall time of the `smoke` preset with the offline model: fast vs reference."""
    from persona_icm.icm import TRAJECTORY_COLUMNS, run_icm
    from persona_icm.scoring.hf import load_hf_scorer

    print(f"\nreal model, preset smoke, {SMOLLM2} on CPU:")
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
    icm.add_argument("--bound-window", type=int, default=16, help="longest run of calls in the bounded-cache bound (d)")
    icm.add_argument("--belady", action="store_true", help="also replay (a) with Belady's clairvoyant eviction (~1 min)")
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
