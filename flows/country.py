"""Flow `persona-icm-country`: the ICM search and every evaluation method for one country.

Called in process by `persona-icm` (a subflow), or run by a `gpu` pool worker through the
deployment `persona-icm-country/country` when the parent fans out. It never writes the
warehouse: its result (frames) goes back to the parent through Prefect result storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow

from persona_icm.claims import Claim
from persona_icm.config import RunConfig
from tasks.common import RESULTS_DIR
from tasks.evaluation import MethodResult, evaluate_method
from tasks.search import SearchResult, icm_search


@dataclass(frozen=True)
class CountryResult:
    country: str
    search: SearchResult
    evaluations: list[MethodResult]


@flow(name="persona-icm-country", flow_run_name="{country}", persist_result=True, result_storage=RESULTS_DIR)
def country_flow(config: RunConfig, country: str, train: list[Claim], test: list[Claim], run_id: str) -> CountryResult:
    """Search on `train`, then evaluate each configured method on `test` (tasks called directly:
    the model runs on this process's main thread, one engine for all of them)."""
    checkpoint_dir = Path(config.warehouse_path).resolve().parent / "checkpoints"
    search = icm_search(train, config.icm, config.base_model, checkpoint_dir)
    labels = search.label_of()
    evaluations = [
        evaluate_method(method, country, train, test, labels, config.eval, config.base_model, config.chat_model, run_id)
        for method in config.eval.methods
    ]
    return CountryResult(country, search, evaluations)
