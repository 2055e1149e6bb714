"""One task per evaluation method (persona_icm.evaluate.evaluate_country restricted to it).

evaluate.py draws its random numbers in an order that does not depend on which methods are
enabled, so evaluating the methods one task at a time gives the same demos and predictions as
evaluating them together.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from persona_icm.claims import Claim
from persona_icm.config import EvalConfig, ModelSpec
from persona_icm.evaluate import evaluate_country
from persona_icm.methods import uses_chat_model
from persona_icm.scoring.base import calls_frame, record_calls
from tasks.progress import ProgressArtifact
from tasks.results import JSON, Frame, Result
from tasks.scorers import GPU, model_name, scorer_for


def chat_methods(names: list[str]) -> list[str]:
    """The eval.methods names scored by the chat model (persona_icm/methods.py), which run after
    the base model's work, with the chat model alone."""
    return [name for name in names if uses_chat_model(name)]


class MethodResult(Result):
    method: str
    predictions: Frame
    demos: Frame
    calls: Frame
    skipped: str | None = None  # why the method was not run (e.g. no chat model)


@task(name="evaluate", tags=[GPU], task_run_name="evaluate-{method}-{country}", result_serializer=JSON,
      cache_result_in_memory=False)
def evaluate_method(
    method: str,
    country: str,
    train: list[Claim],
    test: list[Claim],
    icm_labels: dict[int, dict[str, int]],
    config: EvalConfig,
    base_model: ModelSpec,
    chat_model: ModelSpec | None,
    run_id: str,
) -> MethodResult:
    """Predictions of one method on `country`'s test claims (demos: each ICM search's pool;
    icm_labels: ICM seed -> claim_id -> label).
    A chat-model method (zero_shot_chat) loads only the chat model (none: the method is skipped)."""
    if uses_chat_model(method):
        scorer, chat = None, scorer_for(chat_model) if chat_model is not None else None
    else:
        scorer, chat = scorer_for(base_model), None
    backend = chat or scorer
    progress = ProgressArtifact(f"evaluation {method}, {country}: prompt sets scored")
    with record_calls(backend) as calls:
        result = evaluate_country(
            scorer, train, test, config.model_copy(update={"methods": [method]}),
            icm_labels=icm_labels, chat_scorer=chat, run_id=run_id, progress=progress,
        )
    progress.finish()
    skipped = result.skipped.get(method)
    if skipped:
        get_run_logger().warning("%s skipped for %s: %s", method, country, skipped)
    model = model_name(chat_model if chat is not None else base_model)
    return MethodResult(method=method, predictions=result.predictions, demos=result.demos, calls=calls_frame(calls, model),
                        skipped=skipped)
