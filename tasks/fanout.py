"""Run a deployment as a child flow run on another worker and wait for it, with a bound.

A child that crashed (its worker or machine was lost: the server marks a flow run Crashed when
its heartbeats stop, see flows/automations.py), or that failed because it lost the Prefect server
(a restart: a client it opened while the server was down could not connect), is retried once by
the task; the retry resumes the ICM search from its checkpoint in the shared storage (a batch's
finished searches come from the task cache). A child that failed otherwise is not retried here
(its own tasks had their retries). A child
that has not finished within the bound is cancelled and its countries fail. Either way the error
names what the child was doing.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.states import Cancelling


class ChildCrashed(RuntimeError):
    """The child flow run's process or worker went away (state Crashed)."""


# Failure messages of a child that lost the Prefect server, not its work (httpx's errors; Prefect's
# clients retry a lost connection only on a connection they had opened before the server went away).
SERVER_LOST = ("ConnectError", "ConnectTimeout", "RemoteProtocolError", "All connection attempts failed")


class ChildFailed(RuntimeError):
    """The child flow run ended Failed, Cancelled or timed out."""


def retry_if_crashed(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except ChildCrashed:
        return True
    except Exception:
        return False
    return False


def wait_for_child(flow_run_id, label: str, timeout_seconds: float, poll_seconds: float = 5.0):
    """Poll the child until it is final; log each state change; cancel it past the deadline."""
    log = get_run_logger()
    deadline = time.monotonic() + timeout_seconds
    seen = None
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state_name != seen:
                seen = run.state_name
                log.info("%s: flow run %s is %s", label, run.name, seen)
            if run.state is not None and run.state.is_final():
                return run
            if time.monotonic() > deadline:
                client.set_flow_run_state(flow_run_id, Cancelling(message=f"{label}: no result within {timeout_seconds:.0f} s"), force=True)
                raise ChildFailed(f"{label}: flow run {run.name} had no result within {timeout_seconds:.0f} s (it was {seen}); cancelled")
            time.sleep(poll_seconds)


@task(
    name="run-deployment",
    task_run_name="{label}",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_if_crashed,
)
def run_remotely(deployment: str, parameters: dict[str, Any], label: str, timeout_seconds: float,
                 keep_result: bool = True) -> Any:
    """Start `deployment` with `parameters`, wait (bounded) and return the child's result; with
    `keep_result=False` only the child's flow run id, its result staying in the result storage
    until `child_result` reads it (a task's return value stays in the parent's memory)."""
    child = run_deployment(deployment, parameters=parameters, timeout=0)
    run = wait_for_child(child.id, label, timeout_seconds)
    if run.state.is_completed():
        return run.state.result() if keep_result else str(run.id)
    detail = f"{label}: flow run {run.name} ended {run.state_name}" + (f": {run.state.message}" if run.state.message else "")
    if run.state.is_crashed() or any(lost in (run.state.message or "") for lost in SERVER_LOST):
        raise ChildCrashed(detail)
    raise ChildFailed(detail)


def child_result(flow_run_id: str) -> Any:
    """The result of a completed child flow run, read from the result storage."""
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state.result()
