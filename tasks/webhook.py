"""The webhook of a finished operation: its result document POSTed to
``BULKOPS_WEBHOOK_URL``, signed per Standard Webhooks (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``, secret ``BULKOPS_WEBHOOK_SECRET``).

The flow makes one attempt as it ends (:func:`send`), bounded by ``ATTEMPT_TIMEOUT_S``;
``bulkops serve`` retries what failed, and sends for runs that ended without sending
(crashed), with backoff (``service/webhooks.py``). Every attempt carries the same
``webhook-id`` (``msg_<operation id>``), so the receiver can drop repeats. How it went is
kept with the run, in a ``bulkops-webhook`` artifact the status document shows
(``{"attempts", "last_status", "delivered"}``). A failed delivery never changes the
operation's state.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from prefect import get_client
from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate

from config import get_settings

log = logging.getLogger(__name__)

WEBHOOK_ARTIFACT_TYPE = "bulkops-webhook"
ATTEMPT_TIMEOUT_S = 5.0


def configured() -> bool:
    settings = get_settings()
    return bool(settings.webhook_url and settings.webhook_secret and settings.webhook_secret.get_secret_value())


def webhook_id(operation_id: str) -> str:
    return f"msg_{operation_id}"


def post(document: dict[str, Any]) -> tuple[int | None, str | None]:
    """One signed POST of ``document``; ``(HTTP status or None, error text or None)``."""
    from standardwebhooks.webhooks import Webhook

    settings = get_settings()
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    message_id = webhook_id(document["operation_id"])
    now = datetime.now(UTC)
    signature = Webhook(settings.webhook_secret.get_secret_value()).sign(message_id, now, body)
    headers = {"content-type": "application/json", "webhook-id": message_id,
               "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature,
               "user-agent": "bulkops-webhooks"}
    try:
        response = httpx.post(settings.webhook_url, content=body.encode(), headers=headers,
                              timeout=ATTEMPT_TIMEOUT_S, follow_redirects=False)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:300]
    return response.status_code, None if response.is_success else f"HTTP {response.status_code}"


def record(operation_id: str, state: dict[str, Any], artifact_id: uuid.UUID | None = None) -> uuid.UUID | None:
    """Keep the delivery state with the run (create its artifact, or update it)."""
    with get_client(sync_client=True) as client:
        if artifact_id is not None:
            client.update_artifact(artifact_id, ArtifactUpdate(data=state))
            return artifact_id
        artifact = client.create_artifact(ArtifactCreate(
            type=WEBHOOK_ARTIFACT_TYPE, data=state, description="bulkops webhook delivery",
            flow_run_id=uuid.UUID(operation_id)))
        return artifact.id


def attempt(document: dict[str, Any], state: dict[str, Any] | None = None) -> dict[str, Any]:
    """One delivery attempt; the new delivery state (not yet recorded)."""
    status, error = post(document)
    before = state or {}
    return {
        "webhook_id": webhook_id(document["operation_id"]),
        "attempts": int(before.get("attempts", 0)) + 1,
        "last_status": status,
        "delivered": status is not None and 200 <= status < 300,
        "last_error": error,
        "last_attempt_at": datetime.now(UTC).isoformat(),
    }


def send(document: dict[str, Any]) -> None:
    """The flow's one attempt as the run ends (when a webhook is configured); never raises."""
    if not configured():
        return
    try:
        state = attempt(document)
        record(document["operation_id"], state)
        if not state["delivered"]:
            log.warning("webhook to %s not delivered (%s); `bulkops serve` retries it",
                        get_settings().webhook_url, state["last_error"])
    except Exception as exc:  # noqa: BLE001 - a failed delivery never changes the operation's state
        log.warning("webhook not sent: %s", exc)
