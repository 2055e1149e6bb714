"""Input checks as tasks without retries: waiting does not fix a bad input."""

from __future__ import annotations

import warnings

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from persona_icm import preflight
from persona_icm.config import RunConfig
from persona_icm.gpus import GpuMemoryWarning
from persona_icm.preflight import Preflight
from tasks.scorers import api_key_from_secret


@task(name="check-inputs", cache_policy=NO_CACHE, retries=0)
def check_inputs(config: RunConfig, models_here: bool = True) -> Preflight:
    """GOQA file, selection, config values, models, endpoints and prompt length, before anything
    is written (persona_icm.preflight). `models_here=False`: the models run on other workers,
    which check their own host (check_model_host)."""
    checks = []
    for model_config in config.model_configs():  # every base model of a study, each with the chat model
        keys = {role: api_key_from_secret(spec) for role, spec in (("base_model", model_config.base_model), ("chat_model", model_config.chat_model)) if spec}
        checks.append(preflight.check_run(model_config, models_here=models_here, api_keys=keys))
        get_run_logger().info("inputs ok (%s): %s", model_config.base_model.name, checks[-1].prompt_check())
    return checks[0]


@task(name="check-model-host", cache_policy=NO_CACHE, retries=0)
def check_model_host(config: RunConfig, roles: tuple[str, ...]) -> None:
    """On the worker that loads the model, before it starts: vLLM installed, enough GPUs for tensor
    parallelism and enough free memory on them. Logs each visible GPU's free memory and the processes
    holding it; other processes on the engine's GPUs are a warning line (an error when it would not fit)."""
    logger = get_run_logger()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GpuMemoryWarning)
        lines = preflight.check_model_host(config, roles)
    for line in lines:
        logger.info("before the engine starts: %s", line)
    for warning in caught:
        if issubclass(warning.category, GpuMemoryWarning):
            logger.warning("%s", warning.message)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
