"""What every task shares: where state lives under the checkout, the per-process scorer, progress."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from persona_icm.config import ModelSpec
from persona_icm.scoring import make_scorer
from persona_icm.scoring.base import ClaimScorer

ROOT = Path(__file__).resolve().parent.parent
GPU = "gpu"  # tag of every task that runs a model
# The library's own notices (a resumed search, a damaged checkpoint, a locked warehouse) reach the
# flow run logs through pyproject's [tool.prefect.logging] extra_loggers; INFO included.
logging.getLogger("persona_icm").setLevel(logging.INFO)


def retry_helps(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry_condition_fn: retry unless the failure is one that waiting cannot fix (a bad
    input, an endpoint that returns no log-probs or answers 4xx, a candidate outside the returned top-k)."""
    from persona_icm.preflight import InputError
    from persona_icm.scoring.base import ProcessedLogprobs
    from persona_icm.scoring.openai import (
        CandidateNotReturned,
        EndpointError,
        ModelNotServed,
        NoLogprobsError,
    )

    try:
        state.result()
    except (InputError, NoLogprobsError, CandidateNotReturned, ProcessedLogprobs, ModelNotServed, EndpointError,
            FileNotFoundError, ModuleNotFoundError):
        return False
    except Exception:
        return True
    return True


def model_name(spec: ModelSpec | None) -> str | None:
    return None if spec is None else f"{spec.backend}:{spec.name}"


def scorer_for(spec: ModelSpec) -> ClaimScorer:
    """The one scorer (engine) of this process for `spec`: make_scorer builds it on first use.
    An openai spec naming a Prefect Secret block gets its API key from that block."""
    return make_scorer(spec, api_key=api_key_from_secret(spec))


def api_key_from_secret(spec: ModelSpec) -> str | None:
    """The value of the spec's Prefect Secret block (`openai.api_key_secret`), else None."""
    if spec.backend != "openai" or not spec.openai.api_key_secret:
        return None
    from prefect.blocks.system import Secret

    try:
        return Secret.load(spec.openai.api_key_secret).get()
    except ValueError as error:  # no such block
        raise ValueError(f"Prefect Secret block {spec.openai.api_key_secret!r} (openai.api_key_secret): {error}") from None


def artifact_key(*parts: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    text = "-".join(parts).lower()
    return "".join(ch if ch.isalnum() and ch.isascii() else "-" for ch in text).strip("-")


def top_run_logger() -> logging.LoggerAdapter:
    """A logger whose records land on the run a user started (the top of the flow-run tree, also
    across fanned-out deployment runs): what `prefect deployment run --watch` and the parent's page
    in the UI show, which never show a subflow's or a child run's own logs."""
    from prefect.client.orchestration import get_client
    from prefect.context import TaskRunContext
    from prefect.logging.loggers import flow_run_logger

    context = TaskRunContext.get()
    if context is None:
        return get_run_logger()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(context.task_run.flow_run_id)
        while run.parent_task_run_id is not None:
            parent = client.read_task_run(run.parent_task_run_id)
            if parent.flow_run_id is None:
                break
            run = client.read_flow_run(parent.flow_run_id)
    return flow_run_logger(run)


class ProgressArtifact:
    """A Prefect progress artifact updated at most every `step` percent; every `log_step` percent
    it also logs a line on the top-level run (`top_run_logger`)."""

    def __init__(self, description: str, step: float = 5.0, log_step: float = 10.0):
        self.id = create_progress_artifact(progress=0.0, description=description)
        self.description = description
        self.step, self.log_step = step, log_step
        self.last = self.logged = 0.0
        self.log = top_run_logger()

    def __call__(self, done: int, total: int) -> None:
        percent = 100.0 * done / max(total, 1)
        if percent - self.last >= self.step or done >= total:
            update_progress_artifact(self.id, progress=percent)
            self.last = percent
        if percent - self.logged >= self.log_step or (done >= total and self.logged < 100.0):
            self.log.info("%s: %d of %d (%.0f%%)", self.description, done, total, percent)
            self.logged = percent

    def finish(self) -> None:
        """100%, also for work that had nothing to score (option_prior)."""
        if self.last < 100.0:
            update_progress_artifact(self.id, progress=100.0)
            self.last = 100.0
