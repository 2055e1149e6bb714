"""Benchmark of `persona-icm plan`'s simulation: one search, reference path vs fast path (prints figures).

    python -m benchmarks.bench_plan --csv GOQA.csv [--preset world] [--country NAME] [--repeat 2]

One (country, seed) search of the preset (default: its median country by training claims, seed 0)
runs through `cost.search_cost` with SmolLM2's tokenizer, `--repeat` times each way, interleaved
(reference, fast, reference, ...), in this one process: `reference=True` hashes every prompt's
whole token list and runs vLLM's block pool one block at a time; the default reuses each piece's
block hashes across prompts (`kv_cache.BlockChains`) and keeps the pool's free queue by age
(`kv_cache._VllmBlockPoolByAge`). Prints the best wall and process CPU time of each (the best is
the steadiest figure on a shared machine), their ratio, and whether both gave the same SearchCost.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from persona_icm import cost
from persona_icm.config import PRESET_NAMES, IcmConfig, build_config
from persona_icm.prompts import PromptEncoder
from persona_icm.scoring.models import load_tokenizer
from persona_icm.types import Claim

SMOLLM2 = "smollm2-135m-instruct"


def preset_search(csv: Path, preset: str, country: str | None) -> tuple[str, list[Claim], IcmConfig]:
    """The preset's training claims of `country` (default: the median country by training claims) and its first search."""
    from persona_icm.claims import dataset_from_file

    config = build_config(preset, {"data": {"goqa_path": str(csv)}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a country with fewer claims than the caps says so, once per country
        dataset = dataset_from_file(config.data)[1]
    if country is None:
        by_size = sorted(dataset.countries, key=lambda c: (len(dataset.country_split(c).train), c))
        country = by_size[len(by_size) // 2]
    return country, dataset.country_split(country).train, config.icm.searches()[0]


def timed(run) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, default=os.environ.get("GOQA_PATH"), help="GOQA CSV (default: $GOQA_PATH)")
    parser.add_argument("--preset", default="world", choices=PRESET_NAMES)
    parser.add_argument("--country", default=None, help="default: the preset's median country by training claims")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each path")
    args = parser.parse_args(argv)
    if args.csv is None or not Path(args.csv).exists():
        sys.exit(f"--csv {args.csv}: no such file (give a GOQA CSV with --csv or GOQA_PATH)")
    country, claims, icm = preset_search(args.csv, args.preset, args.country)
    encoder = PromptEncoder(load_tokenizer(SMOLLM2), "base")
    runs: dict[str, list[tuple[object, float, float]]] = {"reference": [], "fast": []}
    for _ in range(args.repeat):
        for path in runs:
            runs[path].append(timed(lambda path=path: cost.search_cost(claims, icm, encoder, reference=path == "reference")))
    results = [r for timings in runs.values() for r, _, _ in timings]
    best = {path: (min(w for _, w, _ in timings), min(c for _, _, c in timings)) for path, timings in runs.items()}
    result = runs["fast"][0][0]
    print(f"preset {args.preset}, {country}, seed {icm.seed}: {len(claims)} training claims, K={icm.iterations}; "
          f"{result.prompts:,} prompts, {result.prompt_tokens:,} prompt tokens ({SMOLLM2} tokens)")
    for path, (wall, cpu) in best.items():
        print(f"  {path:10} {wall:7.2f} s wall  {cpu:7.2f} s CPU  (best of {args.repeat})")
    ratio_wall, ratio_cpu = (best["reference"][i] / best["fast"][i] for i in (0, 1))
    print(f"  reference / fast: {ratio_wall:.2f}x wall, {ratio_cpu:.2f}x CPU; same SearchCost: {all(r == results[0] for r in results)}")


if __name__ == "__main__":
    main()
