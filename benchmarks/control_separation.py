"""Does a model separate the control's options in leave-one-out scoring? (docs/method.md "Positive control")

    python -m benchmarks.control_separation --model gemma-3-270m [--preset control] [--set data.train_cap=48]
        [--more-capitals] [--animal-options] [--without-sibling]

For one country of the preset's data: label every training claim with its gold label, in the
search's context order, and score each claim with every other claim's gold label as context
(one energy evaluation through the search's engine, persona_icm/icm/diagnosis.py's group
ranking). Prints the fraction of training groups whose right option scores above its sibling,
U of gold, and the wall time. No search; gold is read for this measurement only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from persona_icm.claims import dataset_from_file
from persona_icm.cli import parse_overrides
from persona_icm.config import build_config
from persona_icm.control import ANIMALS, CAPITALS, MORE_CAPITALS, control_frame
from persona_icm.icm.diagnosis import group_ranking, with_gold
from persona_icm.icm.engine import make_engine
from persona_icm.icm.state import Labelling, Pool
from persona_icm.scoring import make_scorer
from persona_icm.scoring.base import ScoreRequest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--preset", default="control")
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. data.train_cap=48")
    parser.add_argument("--orders", type=int, default=1, help="context orders: entry order, then shuffled ones")
    parser.add_argument(
        "--without-sibling", action="store_true",
        help="also score each claim with its own question's other claim left out of the context too",
    )
    parser.add_argument(
        "--more-capitals", action="store_true",
        help="the control's questions plus persona_icm.control.MORE_CAPITALS (108), from a temporary file",
    )
    parser.add_argument("--animal-options", action="store_true", help="wrong options from control.ANIMALS, not capitals")
    args = parser.parse_args()

    overrides = parse_overrides(args.set) | {"base_model": {"name": args.model}}
    if args.more_capitals or args.animal_options:
        path = Path(tempfile.mkdtemp(prefix="control-")) / "control_variant_goqa.csv"
        facts = CAPITALS + MORE_CAPITALS if args.more_capitals else CAPITALS
        control_frame(facts=facts, wrong_options=ANIMALS if args.animal_options else ()).write_csv(path)
        overrides["data"] = overrides.get("data", {}) | {"corpus": "goqa", "goqa_path": str(path)}
    config = build_config(args.preset, overrides)
    _, dataset = dataset_from_file(config.data)
    split = dataset.country_split(config.data.countries[0])
    scorer = make_scorer(config.base_model)
    rng = np.random.default_rng(0)
    for k in range(args.orders):
        pool = Pool.from_claims(split.train, config.icm.context_order)
        groups = list(range(len(pool.members))) if k == 0 else [int(g) for g in rng.permutation(len(pool.members))]
        order = Labelling((0,) * len(pool), tuple(groups))
        gold = with_gold(pool, order)
        start = time.perf_counter()
        energies = make_engine(pool, scorer, config.icm).energies([gold])
        seconds = time.perf_counter() - start
        ranking = group_ranking(pool, gold, energies[0])
        right = int(ranking["gold_ranked_first"].sum())
        print(
            f"{args.model} order {k}: gold ranked first in {right}/{ranking.height} training groups "
            f"({right / ranking.height:.2f}); U(gold) {energies[0].U:.3f}; "
            f"{len(pool)} claims, {len(split.test)} test claims; {seconds:.1f} s",
            flush=True,
        )
        if args.without_sibling:
            right = sum(sibling_free_score(pool, gold, scorer, a) > sibling_free_score(pool, gold, scorer, b)
                        for a, b in true_first_pairs(pool))
            print(f"  without the sibling in context: gold ranked first in {right}/{ranking.height}", flush=True)


def true_first_pairs(pool: Pool) -> list[tuple[int, int]]:
    return [tuple(sorted(m, key=lambda i: -pool.claims[i].gold)) for m in pool.members if len(m) == 2]


def sibling_free_score(pool: Pool, gold: Labelling, scorer, index: int) -> float:
    """s of the claim with every other group's gold labels as context (its own group left out)."""
    context = tuple((pool.claims[i], y) for i, y in gold.context(pool) if pool.group_of[i] != pool.group_of[index])
    return scorer.score([ScoreRequest(context, pool.claims[index], "base")])[0]


if __name__ == "__main__":
    main()
