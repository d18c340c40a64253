"""Webhook deliveries that the flows' own attempt did not make: ``bulkops serve`` sweeps
the runs that ended within ``BULKOPS_WEBHOOK_RETRY_WINDOW`` every ``SWEEP_S`` and sends
again (same ``webhook-id``) those not delivered, with backoff between attempts
(``BACKOFF_S``), and sends for runs that ended without sending (crashed). The state of
each delivery is kept with its run (``tasks/webhook.py``).

    sweep()                      # one pass; what it did
    loop = DeliveryLoop(); loop.start(); ...; loop.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from config import get_settings
from flows import FLOW_OPERATIONS
from service.listing import artifacts_of
from service.status import build_status, webhook_state
from tasks import webhook

log = logging.getLogger(__name__)

SWEEP_S = 5.0
BACKOFF_S = (5, 30, 120, 600, 1800, 3600)  # after attempt 1, 2, 3, ... (then hourly)
FINAL_STATES = ["COMPLETED", "FAILED", "CANCELLED", "CRASHED"]
_PAGE = 200


def due(state: dict[str, Any] | None, now: datetime) -> bool:
    """Whether a delivery in this state should be tried now."""
    if state is None:
        return True  # never tried: the run ended without sending (or before webhooks were set)
    if state.get("delivered"):
        return False
    attempts = int(state.get("attempts", 0))
    last = datetime.fromisoformat(state["last_attempt_at"]) if state.get("last_attempt_at") else None
    wait = BACKOFF_S[min(max(attempts - 1, 0), len(BACKOFF_S) - 1)]
    return last is None or now >= last + timedelta(seconds=wait)


def body_of(document: dict[str, Any]) -> dict[str, Any]:
    """What is POSTed: the result document; for a run that crashed before writing one, a
    ``failed`` document that says so."""
    result = document.get("result")
    if result is not None:
        return result
    return {"operation_id": document["operation_id"], "operation": document["operation"],
            "creator_id": document["creator_id"], "status": "failed", "requested": document["progress"]["total"],
            "succeeded": 0, "failed": 0, "skipped": 0, "errors": [], "report_path": None, "output": None,
            "plan": None, "dry_run": False, "duration_s": 0.0,
            "message": "the run ended without writing its result (it crashed); see its logs in Prefect"}


def sweep(*, now: datetime | None = None) -> dict[str, int]:
    """One pass over the runs that ended within the window; ``{"tried", "delivered"}``."""
    from prefect import get_client
    from prefect.client.schemas.objects import FlowRun

    done = {"tried": 0, "delivered": 0}
    if not webhook.configured():
        return done
    now = now or datetime.now(UTC)
    since = now - timedelta(seconds=get_settings().webhook_retry_window)
    with get_client(sync_client=True) as client:
        names = {flow["id"]: flow["name"] for flow in client.request(
            "POST", "/flows/filter", json={"flows": {"name": {"any_": list(FLOW_OPERATIONS)}}, "limit": _PAGE}).json()}
        runs = FlowRun.model_validate_list(client.request("POST", "/flow_runs/filter", json={
            "flows": {"name": {"any_": list(FLOW_OPERATIONS)}},
            "flow_runs": {"state": {"type": {"any_": FINAL_STATES}}, "end_time": {"after_": since.isoformat()}},
            "sort": "END_TIME_DESC", "limit": _PAGE}).json())
        artifacts = artifacts_of(client, [str(run.id) for run in runs])
    for run in runs:
        mine = artifacts[str(run.id)]
        state = webhook_state(mine)
        if not due(state, now):
            continue
        document = build_status(run, FLOW_OPERATIONS[names[str(run.flow_id)]], mine)
        artifact_id = next((a.id for a in mine if a.type == webhook.WEBHOOK_ARTIFACT_TYPE), None)
        try:
            new = webhook.attempt(body_of(document), state)
            webhook.record(str(run.id), new, artifact_id)
        except Exception as exc:  # noqa: BLE001 - the next sweep tries again
            log.warning("webhook for %s: %s", run.id, exc)
            continue
        done["tried"] += 1
        done["delivered"] += int(new["delivered"])
    return done


class DeliveryLoop:
    """A thread that sweeps every ``SWEEP_S`` until stopped (``bulkops serve``)."""

    def __init__(self, every: float = SWEEP_S) -> None:
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bulkops-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                sweep()
            except Exception as exc:  # noqa: BLE001 - Prefect away for a moment: next time
                log.warning("webhook sweep: %s", exc)
                time.sleep(self.every)
