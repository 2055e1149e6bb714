"""Flow `persona-icm-search`: one ICM search (one seed of icm.seeds, one country) as its own flow run.

When a fanned-out run has several seeds and fewer countries than gpu workers, the parent first
sends the (country, seed) searches to batches of their own (flows/batch.py), which run each as
this flow (a subflow), so the seeds of a country search in parallel on as many gpu workers; the
deployment `persona-icm-search/search` runs one search alone. The search task's result is cached
by a key of its claims, search config (with that seed) and model, in the shared result storage;
the country's flow run that follows asks for the same searches and takes every one from that cache.
"""

from __future__ import annotations

from prefect import flow

from persona_icm.claims import Claim
from persona_icm.config import RunConfig
from tasks.checks import check_model_host
from tasks.results import JSON
from tasks.search import icm_search
from tasks.storage import checkpoint_dir, result_storage


@flow(name="persona-icm-search", flow_run_name="{country}, seed {seed}", persist_result=True, result_storage=result_storage(),
      result_serializer=JSON)
def search_flow(config: RunConfig, country: str, train: list[Claim], seed: int, remote: bool = False) -> str:
    """Run (or take from the cache) the search of `seed` on `train`; returns its run key."""
    if remote:
        check_model_host(config, roles=("base_model",))
    (icm,) = [search for search in config.icm.searches() if search.seed == seed]
    return icm_search(train, icm, config.base_model, checkpoint_dir(config.warehouse_path)).run_key
