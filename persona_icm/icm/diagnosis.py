"""Did the search fall short, or does the objective prefer other labels? (docs/method.md "Diagnosis")

    diagnose(claims, labels, scorer, config) -> Diagnosis(energies, groups)

On the claims ICM's final labelling covers, in its final context order, three labellings get one
energy evaluation each through the search's own engine (engine.py, so the same prompts, memo and
objective as the search): gold, ICM's labels, and gold flipped. U(ICM) < U(gold) means the search
did not reach an optimum the objective knows of ("search shortfall"); U(ICM) >= U(gold) means the
objective itself ranks ICM's labels at least as high ("objective prefers other labels"); the view
icm_diagnosis_verdict (warehouse/schema.sql) holds that rule. The
per-group ranking reads gold's leave-one-out scores: in each question group whose claims are
both labelled, does the gold-True option score above its sibling, with every other claim's gold
label as context? Gold is read here, for the diagnosis only; the search never sees it.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from persona_icm.config import IcmConfig
from persona_icm.icm.energy import Energy
from persona_icm.icm.engine import make_engine
from persona_icm.icm.state import UNLABELLED, Labelling, Pool
from persona_icm.scoring.base import ClaimScorer
from persona_icm.types import Claim

LABELLINGS = ("gold", "icm", "gold_flipped")

ENERGY_SCHEMA = {
    "labelling": pl.Utf8,  # gold | icm | gold_flipped
    "U": pl.Float64,
    "P": pl.Float64,
    "I": pl.Int32,
    "claims": pl.Int32,  # claims labelled (ICM's final pool)
    "label_accuracy": pl.Float64,  # the labelling against gold
}
GROUP_SCHEMA = {
    "group_id": pl.Utf8,
    "true_claim_id": pl.Utf8,
    "true_score": pl.Float64,  # leave-one-out s of the gold-True claim, gold labels as context
    "other_claim_id": pl.Utf8,
    "other_score": pl.Float64,
    "gold_ranked_first": pl.Boolean,  # true_score > other_score
}


@dataclass(frozen=True)
class Diagnosis:
    energies: pl.DataFrame  # ENERGY_SCHEMA, one row per labelling of LABELLINGS
    groups: pl.DataFrame  # GROUP_SCHEMA, one row per group with both claims labelled

    def U(self, labelling: str) -> float:
        return float(self.energies.filter(pl.col("labelling") == labelling)["U"][0])


def final_labelling(pool: Pool, labels: pl.DataFrame) -> Labelling:
    """ICM's final labelling from its labels frame (icm.LABELS_SCHEMA): labels, and the groups in
    the order of their first member's context rank (the search's final context order)."""
    index = {c.claim_id: i for i, c in enumerate(pool.claims)}
    unknown = [cid for cid in labels["claim_id"] if cid not in index]
    if unknown:
        raise ValueError(f"ICM labels name claims that are not among the claims given: {unknown[:5]}")
    values = [UNLABELLED] * len(pool)
    order: list[int] = []
    for row in labels.filter(pl.col("label").is_not_null()).sort("context_rank").iter_rows(named=True):
        i = index[row["claim_id"]]
        values[i] = int(row["label"])
        if pool.group_of[i] not in order:
            order.append(pool.group_of[i])
    return Labelling(tuple(values), tuple(order))


def with_gold(pool: Pool, labelling: Labelling, flipped: bool = False) -> Labelling:
    """The same claims and context order, each labelled with its gold label (or its opposite)."""
    values = tuple(
        UNLABELLED if y == UNLABELLED else (1 - c.gold if flipped else c.gold)
        for y, c in zip(labelling.labels, pool.claims, strict=True)
    )
    return Labelling(values, labelling.group_order)


def diagnose(claims: list[Claim], labels: pl.DataFrame, scorer: ClaimScorer, config: IcmConfig) -> Diagnosis | None:
    """U, P and I of gold, ICM's labels and gold flipped, and gold's per-group ranking, under the
    search's config (objective, alpha, consistency, context order). None when ICM labelled nothing."""
    pool = Pool.from_claims(claims, config.context_order)
    icm = final_labelling(pool, labels)
    if not icm.size:
        return None
    gold, flipped = with_gold(pool, icm), with_gold(pool, icm, flipped=True)
    energies = make_engine(pool, scorer, config).energies([gold, icm, flipped])
    rows = [
        {"labelling": name, "U": e.U, "P": e.P, "I": e.I, "claims": lab.size, "label_accuracy": accuracy(pool, lab)}
        for name, lab, e in zip(LABELLINGS, (gold, icm, flipped), energies, strict=True)
    ]
    return Diagnosis(pl.DataFrame(rows, schema=ENERGY_SCHEMA), group_ranking(pool, gold, energies[0]))


def accuracy(pool: Pool, labelling: Labelling) -> float:
    labelled = labelling.labelled()
    return sum(labelling.labels[i] == pool.claims[i].gold for i in labelled) / len(labelled)


def group_ranking(pool: Pool, gold: Labelling, energy: Energy) -> pl.DataFrame:
    """Per group with both claims labelled: gold's leave-one-out scores of its True and its False claim."""
    score = dict(zip((i for i, _ in gold.context(pool)), energy.scores, strict=True))
    rows = []
    for g in gold.group_order:
        members = pool.members[g]
        if len(members) != 2 or not all(i in score for i in members):
            continue
        true, other = sorted(members, key=lambda i: -pool.claims[i].gold)
        rows.append({
            "group_id": pool.group_ids[g],
            "true_claim_id": pool.claims[true].claim_id, "true_score": score[true],
            "other_claim_id": pool.claims[other].claim_id, "other_score": score[other],
            "gold_ranked_first": score[true] > score[other],
        })
    return pl.DataFrame(rows, schema=GROUP_SCHEMA)
