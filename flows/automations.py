"""The server-side automation that turns a lost flow run into a Crashed one.

A flow run whose worker or machine dies stays Running forever: nobody is left to report its
end. Flow runs started from the batch, country, search and chat deployments (and a batch's country
and search subflows) send a heartbeat event every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (30,
set in prefect.yaml); this automation marks such a
run Crashed when `within` seconds pass without a heartbeat or a final state. It watches only
those flows: other flow runs beat at Prefect's default pace (every 180 s). The parent's bounded
wait (tasks/fanout.py) then sees Crashed, retries that batch once and otherwise fails it by name.

    python -m flows.automations            # create it on the server of PREFECT_API_URL (idempotent)
"""

from __future__ import annotations

import sys
from datetime import timedelta

NAME = "persona-icm: crash batch, country, search and chat runs that stopped sending heartbeats"
WATCHED_FLOWS = ("persona-icm-batch", "persona-icm-country", "persona-icm-search", "persona-icm-chat")


def ensure_crash_lost_runs(within_seconds: int = 120) -> str:
    """Create the automation unless one of that name exists; returns its id."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    try:
        return str(Automation.read(name=NAME).id)
    except ValueError:  # not found
        pass
    automation = Automation(
        name=NAME,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            # only runs that beat every 30 s by their deployment's settings; others beat every 180 s
            match_related=ResourceSpecification({"prefect.resource.role": "flow", "prefect.resource.name": list(WATCHED_FLOWS)}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_seconds),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {within_seconds} s: its worker or machine was lost",
            )
        ],
    )
    return str(automation.create().id)


if __name__ == "__main__":
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 120
    print(f"automation {ensure_crash_lost_runs(seconds)}: {NAME} (after {seconds} s)")
