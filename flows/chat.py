"""Flow `persona-icm-chat`: the zero-shot chat baseline for every country, with the chat model alone.

It runs after the countries' base-model work, so a local chat model never shares a process or
GPUs with the base model's engine: in a fanned-out run as its own flow run (deployment
`persona-icm-chat/chat`, gpu pool, on the GPUs the base model used); in process after the base
model was released. An OpenAI-compatible chat model runs wherever the parent runs.
"""

from __future__ import annotations

from prefect import flow

from persona_icm.claims import Claim
from persona_icm.config import RunConfig
from tasks.checks import check_model_host
from tasks.evaluation import MethodResult, chat_methods, evaluate_method
from tasks.results import JSON
from tasks.storage import result_storage


@flow(name="persona-icm-chat", persist_result=True, result_storage=result_storage(), result_serializer=JSON,
      cache_result_in_memory=False)
def chat_flow(
    config: RunConfig, splits: dict[str, tuple[list[Claim], list[Claim]]], run_id: str, remote: bool = False
) -> dict[str, list[MethodResult]]:
    """The chat-model methods' predictions per country (`splits`: country -> (train, test))."""
    if remote:
        check_model_host(config, roles=("chat_model",))
    return {
        country: [
            evaluate_method(method, country, train, test, {}, config.eval, config.base_model, config.chat_model, run_id)
            for method in chat_methods(config.eval.methods)
        ]
        for country, (train, test) in splits.items()
    }
