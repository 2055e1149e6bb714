"""Waiting for a fanned-out child flow run is bounded (tasks/fanout.py), on a real Prefect test
server. The children are runs of a deployment on a pool with no worker, so nothing executes
them: the first test lets the bound expire; in the second a thread plays the server's
lost-run automation (flows/automations.py) and marks each child Crashed, as it would when the
child's heartbeats stop."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest
from prefect import flow

pytestmark = pytest.mark.slow


@flow(name="persona-icm-test-idle-child")
def idle_child() -> str:
    return "never runs"


def idle_deployment(pool: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        except Exception:  # exists from an earlier test
            pass
    idle_child.to_deployment(name=pool).apply(work_pool_name=pool)
    return f"persona-icm-test-idle-child/{pool}"


def children_of(deployment: str):
    from prefect.client.orchestration import get_client

    from tests.helpers import deployment_runs

    with get_client(sync_client=True) as client:
        return deployment_runs(client, deployment)


def test_a_child_that_never_finishes_is_cancelled_at_the_bound_and_its_country_fails(harness):
    from tasks.fanout import run_remotely

    deployment = idle_deployment("nobody-home")

    @flow
    def parent() -> object:
        return run_remotely(deployment, {}, "Atlantis", 4)

    start = time.monotonic()
    state = parent(return_state=True)
    waited = time.monotonic() - start
    assert state.is_failed() and waited < 60
    with pytest.raises(Exception, match=r"Atlantis: flow run .* had no result within 4 s \(it was (Scheduled|Late|Pending)\); cancelled"):
        state.result()
    (child,) = children_of(deployment)
    assert child.state.name in ("Cancelling", "Cancelled")
    print(f"bounded wait: failed after {waited:.1f} s for a 4 s bound")


@contextmanager
def each_child_set_to(deployment: str, state):
    """A thread that puts every child of `deployment` into `state()` once, as the server's lost-run automation (or a
    child's own failure) would; yields the ids of the children it has set."""
    from prefect.client.orchestration import get_client

    done: set = set()
    stop = threading.Event()

    def set_each_child():
        while not stop.is_set():
            with get_client(sync_client=True) as client:
                for run in children_of(deployment):
                    if run.id not in done:
                        client.set_flow_run_state(run.id, state(), force=True)
                        done.add(run.id)
            time.sleep(0.5)

    thread = threading.Thread(target=set_each_child, daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join()


@flow
def parent_of(deployment: str) -> object:
    from tasks.fanout import run_remotely

    return run_remotely(deployment, {}, "Atlantis", 600)


def test_a_crashed_child_is_retried_once_then_fails_naming_its_country(harness):
    from prefect.states import Crashed

    from tasks.fanout import ChildCrashed

    deployment = idle_deployment("lost-workers")
    with each_child_set_to(deployment, lambda: Crashed(message="no heartbeat for 120 s")) as crashed:
        start = time.monotonic()
        state = parent_of(deployment, return_state=True)
        waited = time.monotonic() - start
    assert state.is_failed() and waited < 120
    with pytest.raises(ChildCrashed, match=r"Atlantis: flow run .* ended Crashed: no heartbeat for 120 s"):
        state.result()
    assert len(crashed) == 2  # the first child and the retry's
    print(f"crashed child: retried once, failed after {waited:.1f} s")


@pytest.mark.parametrize(("message", "children"), [
    ("Flow run encountered an exception: ConnectError: All connection attempts failed", 2),  # lost the server: retried
    ("Flow run encountered an exception: ValueError: bad claim", 1),  # its own failure: not retried
])
def test_a_child_that_lost_the_server_is_retried_once_and_one_that_failed_is_not(harness, message, children):
    from prefect.states import Failed

    from tasks.fanout import ChildCrashed, ChildFailed

    deployment = idle_deployment(f"restarted-server-{children}")
    # as a batch fails when a client it opens during a server restart cannot connect
    with each_child_set_to(deployment, lambda: Failed(message=message)) as failed:
        state = parent_of(deployment, return_state=True)
    assert state.is_failed()
    with pytest.raises(ChildCrashed if children == 2 else ChildFailed, match=r"Atlantis: flow run .* ended Failed"):
        state.result()
    assert len(failed) == children
