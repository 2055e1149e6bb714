"""Flow `persona-icm-country`: the ICM search and the base-model evaluations for one country.

Called in process as a subflow: by `persona-icm` when it does not fan out, and by a batch on a
gpu worker when it does (flows/batch.py); the deployment `persona-icm-country/country` runs one
country alone on a gpu worker. It never writes the
warehouse: its result (frames) goes back to the parent through the result storage
(tasks/storage.py). The zero-shot chat baseline is not here: it runs after the base model's
engine is gone (flows/chat.py).
"""

from __future__ import annotations

from prefect import flow

from persona_icm.claims import Claim
from persona_icm.config import RunConfig
from tasks.checks import check_model_host
from tasks.diagnosis import DiagnosisResult, diagnose_search
from tasks.evaluation import MethodResult, chat_methods, evaluate_method
from tasks.results import JSON, Result
from tasks.search import SearchResult, icm_search
from tasks.storage import checkpoint_dir, result_storage


class CountryResult(Result):
    country: str
    searches: dict[int, SearchResult]  # ICM seed -> its search
    diagnoses: dict[int, DiagnosisResult] = {}  # ICM seed -> gold vs ICM vs flipped under its objective
    evaluations: list[MethodResult]


@flow(name="persona-icm-country", flow_run_name="{country}", persist_result=True, result_storage=result_storage(),
      result_serializer=JSON, cache_result_in_memory=False)
def country_flow(
    config: RunConfig, country: str, train: list[Claim], test: list[Claim], run_id: str, remote: bool = False
) -> CountryResult:
    """One ICM search on `train` per seed of icm.seeds (each its own cached task) and its diagnosis, then each
    configured base-model method on `test`, with every seed's labels (tasks called directly: the
    model runs on this process's main thread, one engine for all of them). `remote`: this is its
    own flow run on a worker, so the model host is checked here first."""
    if remote:
        check_model_host(config, roles=("base_model",))
    searches = {
        icm.seed: icm_search(train, icm, config.base_model, checkpoint_dir(config.warehouse_path))
        for icm in config.icm.searches()
    }
    diagnoses = {icm.seed: diagnose_search(train, searches[icm.seed], icm, config.base_model) for icm in config.icm.searches()}
    labels = {seed: search.label_of() for seed, search in searches.items()}
    evaluations = [
        evaluate_method(method, country, train, test, labels, config.eval, config.base_model, None, run_id)
        for method in config.eval.methods
        if method not in chat_methods(config.eval.methods)
    ]
    return CountryResult(country=country, searches=searches, diagnoses=diagnoses, evaluations=evaluations)
