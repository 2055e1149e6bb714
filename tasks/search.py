"""The ICM search task: cached across flow runs, resumable from its checkpoint on retry."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext

from persona_icm.claims import Claim
from persona_icm.config import IcmConfig, ModelSpec
from persona_icm.icm import default_run_key, label_of, run_icm
from persona_icm.scorer_identity import scorer_identity
from persona_icm.scoring.base import calls_frame, record_calls
from tasks.progress import ProgressArtifact
from tasks.results import JSON, Frame, Result
from tasks.retry import retry_helps
from tasks.scorers import GPU, model_name, scorer_for
from tasks.storage import CheckpointMirror, result_storage


class SearchResult(Result):
    """What the flow keeps of one search (plain data: it is the cached task result, stored as JSON)."""

    run_key: str
    labels: Frame  # icm.LABELS_SCHEMA
    trace: Frame  # icm.TRACE_SCHEMA
    calls: Frame  # model_calls rows of the search
    counters: dict[str, int | float | None]

    def label_of(self) -> dict[str, int]:
        return label_of(self.labels)


def search_key(train: list[Claim], icm: IcmConfig, model: ModelSpec) -> str:
    """Algorithm version + search config (incl. seed) + the claims themselves + the model settings
    that change a score (persona_icm/scorer_identity.py): the cache key and the checkpoint's name.

    Engine choice, memo size, checkpoint cadence and the model's speed-only settings (batch sizes,
    tensor parallelism, memory, limits, retries) change only cost, so they are left out.
    """
    return default_run_key(train, icm, json.dumps(scorer_identity(model), sort_keys=True))


def _cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    return "icm-" + search_key(parameters["train"], parameters["icm"], parameters["model"])


@task(
    name="icm-search",
    tags=[GPU],
    cache_key_fn=_cache_key,
    persist_result=True,
    result_storage=result_storage(),
    result_serializer=JSON,
    cache_result_in_memory=False,
    cache_expiration=timedelta(days=365),
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=retry_helps,
)
def icm_search(train: list[Claim], icm: IcmConfig, model: ModelSpec, checkpoint_dir: Path) -> SearchResult:
    """Run (or resume from checkpoint_dir/<key>.ckpt) the search over one country's train claims.
    With a URL storage the checkpoint is fetched from it first and copied back after each save."""
    log = get_run_logger()
    key = search_key(train, icm, model)
    scorer = scorer_for(model)
    country = train[0].country
    progress = ProgressArtifact(f"ICM search, {country}: iterations done")
    checkpoint = Path(checkpoint_dir) / f"{key}.ckpt"
    mirror = CheckpointMirror(checkpoint)
    mirror.fetch()

    def on_progress(p) -> None:
        progress(p.iteration, p.iterations)
        mirror.push_if_saved()

    with record_calls(scorer) as calls:
        result = run_icm(
            train, scorer, icm,
            checkpoint_path=checkpoint,
            run_key=key,
            on_progress=on_progress,
        )
    mirror.push_if_saved()
    counters = vars(result.counters).copy()
    log.info(
        "ICM %s: %d iterations, %d accepted, pool %d, %d prompts in %.1f s (resumed from %s)",
        country, counters["iterations"], counters["accepted"], result.labels["label"].is_not_null().sum(),
        counters["prompts"], counters["wall_seconds"], counters["resumed_from"],
    )
    return SearchResult(run_key=key, labels=result.labels, trace=result.trace, calls=calls_frame(calls, model_name(model)),
                        counters=counters)
