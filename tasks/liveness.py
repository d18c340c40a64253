"""Is a run Prefect calls Running still alive? A run whose process died without a word
(a SIGKILLed CLI on its temporary Prefect server, where no automation marks it) stays
Running in Prefect for ever. A run that sent heartbeats (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``)
and has sent none for :func:`silent_after_s` is dead: marked ``Crashed`` as the heartbeat
automation of ``bulkops serve`` would. One judgment for every reader: admission's count
of a creator's runs (``service/slots.py``) and cleanup's "is a delete finishing these
tombstones" (``flows/cleanup.py``)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from typing import Any

log = logging.getLogger(__name__)


def silent_after_s() -> float:
    """How long a running run may go without a heartbeat before it counts as dead:
    three heartbeats (at least 90 s)."""
    try:
        every = float(os.environ.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY") or 30)
    except ValueError:
        every = 30.0
    return max(90.0, 3 * every)


def dead_runs(client, runs: list[Any], now: dt.datetime) -> list[Any]:
    """The running runs (``FlowRun``) that sent heartbeats and have sent none for a while.
    A run that never sent one has nothing to judge it by: it is not among them."""
    grace = dt.timedelta(seconds=silent_after_s())
    suspects = [run for run in runs if run.state is not None and run.state.type.value in {"RUNNING", "CANCELLING"}
                and run.start_time is not None and run.start_time < now - grace]
    if not suspects:
        return []
    recent = _with_heartbeats(client, suspects, since=now - grace)
    quiet = [run for run in suspects if run.id not in recent]
    if not quiet:
        return []
    ever = _with_heartbeats(client, quiet, since=min(run.start_time for run in quiet) - dt.timedelta(seconds=5))
    return [run for run in quiet if run.id in ever]


def _with_heartbeats(client, runs: list[Any], *, since: dt.datetime) -> set[uuid.UUID]:
    """Which of ``runs`` sent a heartbeat since ``since`` (Prefect's events)."""
    found: set[uuid.UUID] = set()
    for run in runs:  # one small question per run: a few runs at most reach this
        response = client.request("POST", "/events/filter", json={
            "filter": {"event": {"name": ["prefect.flow-run.heartbeat"]},
                       "resource": {"id": [f"prefect.flow-run.{run.id}"]},
                       "occurred": {"since": since.isoformat(), "until": (dt.datetime.now(dt.timezone.utc)
                                                                          + dt.timedelta(minutes=1)).isoformat()}},
            "limit": 1})
        if response.json().get("events"):
            found.add(run.id)
    return found


def mark_crashed(client, run, *, found_by: str) -> None:
    """Mark a dead run ``Crashed``, saying who found it (its claims are then free,
    ``videolib/takeover.py``); a failure to mark is logged, the run is not counted either way."""
    from prefect.states import Crashed

    message = f"no heartbeat for {silent_after_s():.0f}s: the process running it is gone (found by {found_by})"
    try:
        client.set_flow_run_state(run.id, Crashed(message=message), force=True)
        log.warning("run %s: %s", run.id, message)
    except Exception as exc:  # noqa: BLE001 - it is not counted either way
        log.warning("could not mark run %s crashed: %s", run.id, exc)


def living(client, runs: list[Any], *, found_by: str) -> list[Any]:
    """``runs`` without the dead, which are marked Crashed."""
    dead = dead_runs(client, runs, dt.datetime.now(dt.timezone.utc))
    for run in dead:
        mark_crashed(client, run, found_by=found_by)
    return [run for run in runs if run not in dead]
