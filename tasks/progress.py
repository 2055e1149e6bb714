"""Progress of a long task: a Prefect progress artifact, and log lines on the run a user started."""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact


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
