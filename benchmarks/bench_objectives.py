"""Which labelling each ICM objective prefers, on a finished run's claims (prints figures; no search).

    python -m benchmarks.bench_objectives --warehouse W.duckdb --run-id RUN [--seed 0] [--country C]

For one (run, country, ICM seed): the diagnosis under the run's own objective (persona_icm/icm/diagnosis.py),
then the leave-one-out scores of a family of labellings of the claims ICM labelled, in its final demo
order, scored once with the run's base model: gold, ICM's labels, gold flipped, and gold with one
question group's two labels swapped (one per group). Each objective's U is computed from those same
scores (and each claim's zero-shot score, for `logodds_calibrated`) by the search's own energy function,
so the objectives are compared on identical model outputs: is gold the best labelling an objective knows
of among its one-group neighbours, and does it rank gold above ICM's labels?
"""

from __future__ import annotations

import argparse
import json

import polars as pl

from persona_icm.claims import load_country_split
from persona_icm.config import RunConfig
from persona_icm.icm.diagnosis import diagnose, final_labelling, with_gold
from persona_icm.icm.energy import energy
from persona_icm.icm.engine import FastEngine
from persona_icm.icm.state import Labelling, Pool
from persona_icm.scoring import make_scorer
from persona_icm.warehouse import open_warehouse

OBJECTIVES = {"logodds_mean": 3.5, "logprob_sum": 50.0, "logodds_calibrated": 3.5}  # objective -> the alpha it is run with


def swapped_group(pool: Pool, labelling: Labelling, group: int) -> Labelling:
    a, b = pool.members[group]
    return labelling.with_labels(pool, [(a, labelling.labels[b]), (b, labelling.labels[a])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--country")
    args = parser.parse_args()

    with open_warehouse(args.warehouse, read_only=True) as wh:
        run = wh.sql("SELECT config_json, dataset_id FROM runs WHERE run_id = ?", [args.run_id]).row(0, named=True)
        config = RunConfig.model_validate(json.loads(run["config_json"]))
        country = args.country or config.data.countries[0]
        train = load_country_split(wh, run["dataset_id"], country).train
        labels = wh.sql("SELECT * EXCLUDE (run_id, country, icm_seed) FROM icm_labels WHERE run_id = ? AND country = ? "
                        "AND icm_seed = ?", [args.run_id, country, args.seed])
    icm_config = config.icm.model_copy(update={"seed": args.seed, "seeds": None})
    scorer = make_scorer(config.base_model)

    found = diagnose(train, labels, scorer, icm_config)
    print(f"diagnosis of run {args.run_id}, {country}, seed {args.seed} ({icm_config.objective}, alpha {icm_config.alpha}):")
    print(found.energies)
    print(found.groups)
    print(f"gold ranked first in {int(found.groups['gold_ranked_first'].sum())} of {found.groups.height} groups")

    pool = Pool.from_claims(train, icm_config.context_order)
    icm = final_labelling(pool, labels)
    gold = with_gold(pool, icm)
    family = {"gold": gold, "icm": icm, "gold_flipped": with_gold(pool, icm, flipped=True)}
    whole = [g for g in gold.group_order if len(pool.members[g]) == 2 and all(gold.labels[i] >= 0 for i in pool.members[g])]
    family |= {f"gold, {pool.group_ids[g][:8]} swapped": swapped_group(pool, gold, g) for g in whole}
    calibrated = icm_config.model_copy(update={"objective": "logodds_calibrated"})
    engine = FastEngine(pool, scorer, calibrated)  # scores every labelling once, and the zero-shot scores
    scored = dict(zip(family, engine.energies(list(family.values())), strict=True))
    rows = []
    for objective, alpha in OBJECTIVES.items():
        cfg = icm_config.model_copy(update={"objective": objective, "alpha": alpha})
        u = {
            name: energy(lab.context(pool), list(scored[name].scores), len(lab.inconsistent_pairs(pool)), cfg,
                         engine.zero_shot).U
            for name, lab in family.items()
        }
        neighbours = [n for n in family if n.startswith("gold, ")]
        best = max(u, key=u.get)
        rows.append({
            "objective": objective, "alpha": alpha, "U_gold": u["gold"], "U_icm": u["icm"], "U_flipped": u["gold_flipped"],
            "gold_above_icm": u["gold"] > u["icm"],
            "neighbours_above_gold": sum(u[n] > u["gold"] for n in neighbours), "neighbours": len(neighbours),
            "best_of_family": best,
        })
    with pl.Config(tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=40):
        print(pl.DataFrame(rows))


if __name__ == "__main__":
    main()
