"""Admission: a front door (the API's POSTs, the CLI) refuses an operation with
``too_many_running`` (HTTP 429 + ``Retry-After``, exit 2) when its creator already has
``BULKOPS_MAX_RUNNING_PER_CREATOR`` operations pending or running, counted over every
bulkops run of that creator however it was started: the runs tagged ``creator:<id>``
(``flows.tag_run``) of the three bulk flows in a state that has not ended (a run still
scheduled for later does not count until it is due).

:func:`admission` holds a per-creator lock from the count to the run's creation, so
concurrent requests to one process start exactly the limit. What no lock here covers (two
processes, a run from the Prefect UI) the flow's own slot catches (``flows/slots.py``):
such a run waits for a slot instead of running over the limit.

A run whose process died without a word (a SIGKILLed CLI on its temporary Prefect server,
where no automation marks it) would hold its creator's count forever: a run that sent
heartbeats (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``) and has sent none for
``tasks.liveness.silent_after_s`` is not counted, and is marked ``Crashed``, as the heartbeat
automation of ``bulkops serve`` would (its claims are then free, ``videolib/takeover.py``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any

from config import get_settings
from tasks.liveness import living
from videolib.ids import RequestError


ACTIVE_STATES = ["SCHEDULED", "PENDING", "RUNNING", "CANCELLING", "PAUSED"]
DUE_WITHIN = dt.timedelta(minutes=1)  # a scheduled run counts once it is due
RETRY_AFTER_DEFAULT_S = 30
RETRY_AFTER_RANGE_S = (5, 300)

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(creator_id: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(creator_id, threading.Lock())


@contextlib.contextmanager
def admission(creator_id: str | None) -> Iterator[None]:
    """Refuse with ``too_many_running`` when the creator is at the limit; otherwise hold
    the creator's lock while the caller creates the run (so the next count sees it)."""
    limit = get_settings().max_running_per_creator
    if creator_id is None:  # the whole library's operation (cleanup): one at a time
        with _lock(""):
            admit(None)
            yield
        return
    if limit <= 0:
        yield
        return
    with _lock(creator_id):
        admit(creator_id, limit=limit)
        yield


def admit(creator_id: str | None, *, limit: int | None = None) -> None:
    """Refuse with ``too_many_running`` when the creator is at the limit (no lock: for a
    caller that cannot hold one until its run exists, the CLI running a flow in-process;
    the flow's slot covers the rest)."""
    if creator_id is None:
        refuse_a_second_cleanup()
        return
    limit = get_settings().max_running_per_creator if limit is None else limit
    if limit <= 0:
        return
    runs = running_runs(creator_id)
    if len(runs) < limit:
        return
    retry_after = _retry_after(runs)
    raise RequestError(
        "too_many_running",
        f"creator {creator_id!r} already has {len(runs)} operations pending or running (at most {limit}, "
        f"BULKOPS_MAX_RUNNING_PER_CREATOR): wait for one to end (bulkops list --creator {creator_id} --status "
        f"in_progress) and try again in about {retry_after}s",
        retry_after=retry_after, running=[str(run.id) for run in runs],
    )


def refuse_a_second_cleanup() -> None:
    """Cleanup runs one at a time: ``cleanup_running`` (HTTP 409) while one has started
    and not ended. A scheduled one that no worker has taken yet (the daily run, due while
    the workers are down) does not hold the next back: when it starts, the flow's own
    exclusive slot ends it ``cleanup_running`` if this one is still going."""
    runs = [run for run in running_runs(None) if run.state is None or run.state.type.value != "SCHEDULED"]
    if runs:
        running = str(runs[0].id)
        raise RequestError("cleanup_running", f"cleanup {running} is still running (one at a time): follow it with "
                                              f"`bulkops status {running} --watch`, or stop it with `bulkops cancel "
                                              f"{running}`", running=[str(run.id) for run in runs])


def running_runs(creator_id: str | None) -> list[Any]:
    """The creator's bulkops runs that have not ended (the ones that count), without the
    dead (``tasks/liveness.py``: no heartbeat for a while, marked Crashed); with
    ``creator_id`` None, the cleanup runs that have not ended."""
    from prefect import get_client
    from prefect.client.schemas.objects import FlowRun

    from flows import CLEANUP, FLOW_OPERATIONS, creator_tag

    now = dt.datetime.now(dt.timezone.utc)
    with get_client(sync_client=True) as client:
        runs = FlowRun.model_validate_list(client.request("POST", "/flow_runs/filter", json={
            "flows": {"name": {"any_": [CLEANUP] if creator_id is None else sorted(set(FLOW_OPERATIONS) - {CLEANUP})}},
            "flow_runs": {**({"tags": {"all_": [creator_tag(creator_id)]}} if creator_id is not None else {}),
                          "state": {"type": {"any_": ACTIVE_STATES}}},
            "limit": 200}).json())
        runs = [run for run in runs if not _later(run, now)]
        return living(client, runs, found_by="bulkops when it counted the creator's running operations")


def _later(run, now: dt.datetime) -> bool:
    state = run.state
    if state is None or state.type.value != "SCHEDULED":
        return False
    when = run.next_scheduled_start_time or run.expected_start_time
    return when is not None and when > now + DUE_WITHIN


def _retry_after(runs: list[Any]) -> int:
    """Seconds until a slot is likely free: the soonest end the running operations'
    progress predicts, within 5 s .. 5 min; 30 s when none can say."""
    from service.status import read_status

    etas = []
    for run in runs[:10]:
        try:
            document = read_status(str(run.id))
        except Exception:  # noqa: BLE001 - a hint, not a rule
            continue
        eta = (document or {}).get("eta_seconds")
        if isinstance(eta, (int, float)):
            etas.append(eta)
    low, high = RETRY_AFTER_RANGE_S
    return int(min(max(min(etas), low), high)) if etas else RETRY_AFTER_DEFAULT_S
