"""Prefect work pools and the zombie-run automation Loom's deployments rely on.

`loom services up` creates them on its local server (`ensure`, `ensure_zombie_automation`);
`loom deploy` checks the pools exist on the server it deploys to (`missing`). On production
servers, create the same: process pools, and the automation that crashes flow runs whose
heartbeats stopped (their workers need `PREFECT_FLOWS_HEARTBEAT_FREQUENCY`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

POOLS = ("cpu", "gpu")  # the process work pools prefect.yaml's deployments run on
HEARTBEAT_SECONDS = 30  # Prefect's minimum
ZOMBIE_AUTOMATION = "loom: crash flow runs that stopped sending heartbeats"


def missing(names: Iterable[str]) -> list[str]:
    """The work pools among `names` that the configured Prefect server does not have."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found = []
    with get_client(sync_client=True) as client:
        for name in sorted(names):
            try:
                client.read_work_pool(name)
            except ObjectNotFound:
                found.append(name)
    return found


def ensure(api_url: str, names: Iterable[str]) -> None:
    """Create the process work pools that do not exist yet."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    with SyncPrefectClient(api=api_url) as client:
        for name in names:
            try:
                client.read_work_pool(name)
            except ObjectNotFound:
                with contextlib.suppress(ObjectAlreadyExists):  # created meanwhile
                    pool = WorkPoolCreate(name=name, type="process", base_job_template=template)
                    client.create_work_pool(pool)


def ensure_zombie_automation(api_url: str, silence: float = 3 * HEARTBEAT_SECONDS) -> None:
    """Prefect's recipe for zombie flow runs: a run whose heartbeats stop (its worker or
    machine died) is set Crashed, so it can be retried; the retry resumes after the stages
    the dead attempt finished (see flows/pipeline.py)."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            if client.read_automations_by_name(ZOMBIE_AUTOMATION):
                return
        Automation(
            name=ZOMBIE_AUTOMATION,
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
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(seconds=silence),
            ),
            actions=[
                # name, force: Prefect's Field(None/False) defaults, which mypy (without the
                # pydantic plugin) reads as required
                ChangeFlowRunState(  # type: ignore[call-arg]
                    state=StateType.CRASHED,
                    message=f"no heartbeat for {silence:.0f} s: its worker or machine died",
                )
            ],
        ).create()
