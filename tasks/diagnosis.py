"""The diagnosis task: gold, ICM's labels and gold flipped under the search's objective, after each search."""

from __future__ import annotations

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from persona_icm.claims import Claim
from persona_icm.config import IcmConfig, ModelSpec
from persona_icm.icm.diagnosis import ENERGY_SCHEMA, GROUP_SCHEMA, diagnose
from persona_icm.scoring.base import calls_frame, record_calls
from tasks.results import JSON, Frame, Result
from tasks.scorers import GPU, model_name, scorer_for
from tasks.search import SearchResult


class DiagnosisResult(Result):
    energies: Frame  # icm.diagnosis.ENERGY_SCHEMA (empty: ICM labelled nothing)
    groups: Frame  # icm.diagnosis.GROUP_SCHEMA
    calls: Frame  # model_calls rows, phase "diagnosis"


@task(name="icm-diagnosis", tags=[GPU], cache_policy=NO_CACHE, result_serializer=JSON,
      cache_result_in_memory=False)
def diagnose_search(train: list[Claim], search: SearchResult, icm: IcmConfig, model: ModelSpec) -> DiagnosisResult:
    """U, P and I of gold, ICM's final labels and gold flipped, and gold's per-group ranking, with
    the search's scorer and config (three energy evaluations, one backend call with the fast engine)."""
    scorer = scorer_for(model)
    with record_calls(scorer, "diagnosis") as calls:
        found = diagnose(train, search.labels, scorer, icm)
    energies = found.energies if found else pl.DataFrame(schema=ENERGY_SCHEMA)
    groups = found.groups if found else pl.DataFrame(schema=GROUP_SCHEMA)
    if found:
        u = dict(zip(energies["labelling"], energies["U"], strict=True))
        get_run_logger().info(
            "ICM diagnosis %s, seed %d: U(gold) %.4f, U(ICM) %.4f, U(gold flipped) %.4f; gold ranked first in %d of %d groups",
            train[0].country, icm.seed, u["gold"], u["icm"], u["gold_flipped"], groups["gold_ranked_first"].sum(), groups.height,
        )
    return DiagnosisResult(energies=energies, groups=groups, calls=calls_frame(calls, model_name(model)))
