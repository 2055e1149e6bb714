"""Benchmark of the hf backend: throughput with and without shared-prefix KV reuse (prints figures).

    python -m benchmarks.bench_scoring [--model smollm2-135m-instruct] [--workload loo shared]
    python -m benchmarks.bench_scoring --workload loo --demos 16 --prompts 16   # 16 prompts of ~790 tokens

Workloads (synthetic GOQA-like claims of one country, ~35 tokens per demo row):
  fix     a consistency fix: the leave-one-out prompts of three labellings of a pool of `--demos` / 3
          demos that differ only in the last question's two labels (one backend call in the search).
  loo     ICM's pattern: `--prompts` prompts over a `--demos`-demo pool; the first min(prompts,
          demos) leave one demo out (the scored claim becomes the query), the rest are held-out
          queries on the full pool.
  shared  evaluation's pattern: `--queries` queries on one context of about `--prefix-tokens` tokens.
Each workload runs twice in one process, prefix_reuse off and on, and prints wall and process CPU
time (CPU time is steadier on a shared machine), prompt tokens, computed tokens, forward slots
(token positions run through the model, padding included), tokens/s (prompt tokens per wall
second), the max |difference| between the two runs, and the prefix-trie bound: the tokens of the
prompts' distinct prefixes, the least any reuse computes (the hf backend computes exactly that,
plus one token per prompt that is a prefix of another).
"""

from __future__ import annotations

import argparse
import time

import torch

from persona_icm.claims import Claim
from persona_icm.scoring.base import ScoreRequest

WORDS = (
    "government economy religion children future trust country people women national foreign "
    "important society family opinion policy change world leaders democracy freedom work"
).split()


def synthetic_claims(n: int, country: str = "France", seed: int = 0) -> list[Claim]:
    rng = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        picks = torch.randint(len(WORDS), (12,), generator=rng).tolist()
        question = "How much do you agree that " + " ".join(WORDS[p] for p in picks) + f" matters ({i // 2})?"
        option = ["Agree", "Disagree", "Somewhat", "Not at all", "Very much", "Yes", "No"][(i * 3 + i // 2) % 7]
        out.append(Claim(f"c{i}", f"g{i // 2}", country, question, option, int(i % 2 == 0)))
    return out


def loo_requests(demos: int, prompts: int) -> list[ScoreRequest]:
    claims = synthetic_claims(demos + max(0, prompts - demos))
    pool = [(c, c.gold) for c in claims[:demos]]
    out = [ScoreRequest(tuple(pool[:i] + pool[i + 1 :]), claims[i]) for i in range(min(prompts, demos))]
    return out + [ScoreRequest(tuple(pool), q) for q in claims[demos:]]


def fix_requests(demos: int) -> list[ScoreRequest]:
    claims = synthetic_claims(demos)
    gold = [c.gold for c in claims]
    labellings = [gold, gold[:-2] + [1, 0], gold[:-2] + [0, 1]]
    out = []
    for labels in labellings:
        pool = list(zip(claims, labels, strict=True))
        out += [ScoreRequest(tuple(pool[:i] + pool[i + 1 :]), claims[i]) for i in range(demos)]
    return out


def trie_tokens(prompts: list[list[int]]) -> int:
    """Tokens in the prompts' prefix trie: each distinct prefix computed once."""
    from persona_icm.scoring.hf import common_prefix_length

    ordered = sorted(map(tuple, prompts))
    total, previous = 0, ()
    for p in ordered:
        total += len(p) - common_prefix_length(previous, p)
        previous = p
    return total


def shared_requests(queries: int, prefix_tokens: int, tokens_per_row: int) -> list[ScoreRequest]:
    n_demos = max(1, prefix_tokens // tokens_per_row)
    claims = synthetic_claims(n_demos + queries)
    context = tuple((c, c.gold) for c in claims[:n_demos])
    return [ScoreRequest(context, q) for q in claims[n_demos:]]


def run(scorer, requests: list[ScoreRequest], reuse: bool) -> tuple[list[float], dict]:
    scorer.prefix_reuse = reuse
    slots = scorer.forward_tokens
    start, cpu = time.perf_counter(), time.process_time()
    scores = scorer.score(requests)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    call = scorer.calls[-1]
    computed = call.prompt_tokens - (call.cached_tokens or 0)
    return scores, {"wall": wall, "cpu": cpu, "prompt": call.prompt_tokens, "computed": computed, "slots": scorer.forward_tokens - slots}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_scoring", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--workload", nargs="+", choices=["fix", "loo", "shared"], default=["fix", "loo", "shared"])
    parser.add_argument("--demos", type=int, default=60)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--prefix-tokens", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--kv-budget-gb", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from persona_icm.scoring.hf import load_hf_scorer

    t0 = time.perf_counter()
    scorer = load_hf_scorer(args.model, batch_size=args.batch_size, kv_budget_bytes=args.kv_budget_gb * 1e9)
    print(f"model {args.model} loaded in {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}; "
          f"batch_size {args.batch_size}; KV {scorer.kv_bytes_per_token} bytes/token")
    enc = scorer.encoder("base")
    row = synthetic_claims(2)
    tokens_per_row = len(enc.encode(ScoreRequest(((row[0], 1),), row[1]))) - len(enc.encode(ScoreRequest((), row[1])))
    workloads = {
        "fix": lambda: fix_requests(args.demos // 3),
        "loo": lambda: loo_requests(args.demos, args.prompts),
        "shared": lambda: shared_requests(args.queries, args.prefix_tokens, tokens_per_row),
    }
    for name in args.workload:
        requests = workloads[name]()
        encoded = [enc.encode(r) for r in requests]
        lengths = [len(e) for e in encoded]
        bound = trie_tokens(encoded)
        print(f"\n[{name}] {len(requests)} prompts, {min(lengths)}-{max(lengths)} tokens each; "
              f"prefix-trie bound {bound} tokens")
        results = {}
        for reuse in (False, True):
            scores, stats = run(scorer, requests, reuse)
            results[reuse] = (scores, stats)
            print(f"  prefix_reuse={reuse!s:5}  wall {stats['wall']:6.1f} s  cpu {stats['cpu']:6.1f} s  prompt tokens {stats['prompt']:7d}  "
                  f"computed {stats['computed']:7d}  forward slots {stats['slots']:7d}  "
                  f"{stats['prompt'] / stats['wall']:8.0f} prompt tok/s  {stats['computed'] / stats['wall']:7.0f} computed tok/s")
        off, on = results[False][1], results[True][1]
        diff = max(abs(a - b) for a, b in zip(results[False][0], results[True][0], strict=True))
        print(f"  computed {on['computed']} / trie bound {bound} = {on['computed'] / bound:.3f} "
              f"(forward slots / bound {on['slots'] / bound:.3f}); {off['computed'] / on['computed']:.2f}x fewer computed "
              f"tokens than no reuse; speed-up {off['wall'] / on['wall']:.2f}x wall, {off['cpu'] / on['cpu']:.2f}x cpu; max |score difference| {diff:.2e}")


if __name__ == "__main__":
    main()
