"""Flow `persona-icm-batch`: one gpu worker's share of a fanned-out run, on one engine.

A flow run on a gpu worker is a new process, and a new process loads the model again (minutes at
70B). So the parent (flows/experiment.py) sends each gpu worker one batch (deployment
`persona-icm-batch/batch`; which work goes where: persona_icm/batches.py) and the batch runs its
searches and countries one after another as subflows of `persona-icm-search` and
`persona-icm-country` in this process: each is still its own flow run in Prefect, with its own
state and logs, and all of them score on the process's one engine (tasks/scorers.py).

A retried batch (its worker was lost) runs its units again: finished searches come from the task
cache, an unfinished one resumes from its checkpoint.
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel

from flows.country import CountryResult, country_flow
from flows.search import search_flow
from persona_icm.claims import Claim
from persona_icm.config import RunConfig
from tasks.checks import check_model_host
from tasks.results import JSON
from tasks.storage import result_storage


class CountryUnit(BaseModel):
    country: str
    train: list[Claim]
    test: list[Claim]


class SearchUnit(BaseModel):
    country: str
    train: list[Claim]
    seed: int


@flow(name="persona-icm-batch", flow_run_name="{label}", persist_result=True, result_storage=result_storage(),
      result_serializer=JSON, cache_result_in_memory=False)
def batch_flow(
    config: RunConfig,
    run_id: str,
    label: str,
    searches: list[SearchUnit] | None = None,
    countries: list[CountryUnit] | None = None,
) -> list[CountryResult]:
    """The searches (each a `persona-icm-search` subflow), then the countries (each a
    `persona-icm-country` subflow); returns the countries' results. `label` names the run."""
    check_model_host(config, roles=("base_model",))
    for unit in searches or []:
        search_flow(config, unit.country, unit.train, unit.seed)
    return [country_flow(config, unit.country, unit.train, unit.test, run_id) for unit in countries or []]
