"""A creator's slot: at most ``BULKOPS_MAX_RUNNING_PER_CREATOR`` operations of one
creator run at once, however they were started (the API, the CLI, the Prefect UI, a
schedule).

The front doors refuse a request over the limit before they create a run
(``service/slots.py``, 429 / exit 2 ``too_many_running``). The flow itself takes one slot
of a Prefect global concurrency limit named ``bulkops-creator-<creator_id>`` when it
starts, so a run that no front door counted (a deployment run from the UI, two front
doors racing) waits for a slot instead of running over the limit. While it waits its
state is ``Running`` named ``AwaitingConcurrencySlot`` with a message saying for whom
(``bulkops status``: ``pending``); after ``BULKOPS_SLOT_WAIT`` it ends ``Cancelled`` with
``too_many_running`` in its result. A cancel while it waits ends it at once.

The slot is a lease (``BULKOPS_SLOT_LEASE``, renewed while the run lives): released as
the operation ends, whatever way it ends, and, when the run's process dies without a
word, revoked by the Prefect server once the lease runs out, so a killed run cannot lock
its creator out. The leases live in the server's lease storage: ``bulkops`` starts its
Prefect servers with the file-system one (``PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE``),
so they outlive a restart of the server; and since Prefect's temporary server revokes no
expired lease, a waiting run gives back the expired ones of its own limit itself
(:func:`release_expired_leases`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable

from prefect import get_client
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

log = logging.getLogger(__name__)

SLOT_PREFIX = "bulkops-creator-"
AWAITING = "AwaitingConcurrencySlot"
POLL_S = 2.0  # how often a waiting run asks for its slot again
SWEEP_S = 15.0  # how often a waiting run looks for expired leases of its limit (the repossessor's period)
TOO_MANY_RUNNING = "too_many_running"


def slot_name(creator_id: str) -> str:
    """The global concurrency limit of a creator's operations."""
    return f"{SLOT_PREFIX}{creator_id}"


def ensure_limit(client, name: str, limit: int) -> uuid.UUID:
    """The limit ``name`` exists with ``limit`` slots (created, or its size set anew); its id."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate

    try:
        existing = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        try:
            return client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
        except ObjectAlreadyExists:  # another run created it just now
            existing = client.read_global_concurrency_limit_by_name(name)
    if existing.limit != limit or not existing.active:
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=limit, active=True))
    return existing.id


def release_expired_leases(client, limit_id: uuid.UUID) -> int:
    """Give back the slots of ``limit_id`` whose leases ran out, as the Prefect server's
    repossessor does, when the leases are on this machine's disk: Prefect's temporary
    server (a CLI call without ``PREFECT_API_URL``) runs no repossessor, so the slot of a
    run killed on one would otherwise stay taken. Through the API (``decrement-with-lease``
    takes an expired lease too), only leases past their expiry; how many."""
    import datetime as dt
    import json
    import os
    from pathlib import Path

    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    now = dt.datetime.now(dt.timezone.utc)
    released = 0
    for path in (home / "concurrency_leases").glob("*.json"):
        try:
            lease = json.loads(path.read_text())
            expired = dt.datetime.fromisoformat(lease["expiration"]) < now
            mine = str(limit_id) in lease.get("resource_ids", [])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # the index, a lease being written, or one just revoked
        if expired and mine:
            try:
                client.release_concurrency_slots_with_lease(uuid.UUID(lease["id"]))
                released += 1
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.debug("could not release expired lease %s: %s", lease.get("id"), exc)
    return released


class CreatorSlot:
    """One run's slot of its creator's limit: :meth:`acquire` (waiting while the limit
    is full), a renewal thread while it is held, :meth:`release` however the run ends."""

    def __init__(self, operation_id: str, creator_id: str, *, limit: int, lease_s: float, wait_s: float,
                 logger: logging.Logger | logging.LoggerAdapter | None = None):
        self.operation_id = operation_id
        self.creator_id = creator_id
        self.name = slot_name(creator_id)
        self.limit = limit
        self.lease_s = lease_s
        self.wait_s = wait_s
        self.logger = logger or log
        self.lease_id: uuid.UUID | None = None
        self.waited_s = 0.0
        self._stop_renewal = threading.Event()
        self._renewal: threading.Thread | None = None

    @classmethod
    def configured(cls, operation_id: str, creator_id: str, logger=None) -> CreatorSlot | None:
        """The run's slot under the current settings; None when there is no limit (0)."""
        from config import get_settings

        from videolib.ids import is_valid_creator_id

        settings = get_settings()
        if settings.max_running_per_creator <= 0 or not is_valid_creator_id(creator_id):
            return None  # no limit; or a run refused as it prepares (invalid_creator)
        return cls(operation_id, creator_id, limit=settings.max_running_per_creator,
                   lease_s=settings.slot_lease, wait_s=settings.slot_wait, logger=logger)

    def acquire(self, stopped: Callable[[], bool]) -> str:
        """Take the slot: ``"acquired"``; ``"stopped"`` when ``stopped()`` turned true
        while waiting (a cancel); ``"timeout"`` after ``wait_s`` without one."""
        from prefect.client.schemas.objects import ConcurrencyLeaseHolder

        holder = ConcurrencyLeaseHolder(type="flow_run", id=uuid.UUID(self.operation_id))
        started = time.monotonic()
        waiting = False
        swept = 0.0
        with get_client(sync_client=True) as client:
            limit_id = ensure_limit(client, self.name, self.limit)
            try:
                while True:
                    lease_id = self._try(client, holder)
                    if lease_id is not None:
                        self.lease_id = lease_id
                        break
                    if time.monotonic() - swept >= SWEEP_S:
                        swept = time.monotonic()
                        if release_expired_leases(client, limit_id):
                            continue  # a dead run's slot came free: ask again at once
                    if self.wait_s <= 0:
                        return "timeout"  # not waited for (an exclusive slot)
                    if not waiting:
                        waiting = True
                        self._say_waiting(client)
                    if stopped():
                        return "stopped"
                    if time.monotonic() - started >= self.wait_s:
                        self.waited_s = time.monotonic() - started
                        return "timeout"
                    time.sleep(POLL_S * random.uniform(0.75, 1.25))  # waiting runs do not ask in step
            finally:
                self.waited_s = time.monotonic() - started
                if waiting and self.lease_id is not None:
                    self._say_running(client)
        self._renewal = threading.Thread(target=self._renew, name="bulkops-slot-lease", daemon=True)
        self._renewal.start()
        return "acquired"

    def take(self, stopped: Callable[[], bool]) -> tuple[str | None, str] | None:
        """:meth:`acquire` for a run: None once the slot is held (or when Prefect cannot
        count slots: the run goes on rather than not at all); otherwise why the run ends
        before it touched anything, ``(error code or None, message)``."""
        try:
            outcome = self.acquire(stopped)
        except Exception as exc:  # noqa: BLE001 - see above
            self.logger.warning("could not take the creator's slot (%s: %s); running without it",
                                type(exc).__name__, exc)
            return None
        if outcome == "acquired":
            if self.waited_s >= 1.0:
                self.logger.warning("got a slot of creator %r after %.0fs", self.creator_id, self.waited_s)
            return None
        if outcome == "stopped":
            ended: tuple[str | None, str] = (None, "while it waited for a slot; nothing was touched")
        else:
            ended = (TOO_MANY_RUNNING, f"too_many_running: creator {self.creator_id!r} kept {self.limit} operations "
                                       f"running (BULKOPS_MAX_RUNNING_PER_CREATOR) for {self.waited_s:.0f}s "
                                       "(BULKOPS_SLOT_WAIT); nothing was touched: start it again when one has ended")
        self.logger.warning(ended[1])
        return ended

    def _try(self, client, holder) -> uuid.UUID | None:
        import httpx

        try:
            response = client.increment_concurrency_slots_with_lease(
                names=[self.name], slots=1, mode="concurrency", lease_duration=self.lease_s, holder=holder)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 423:  # every slot taken
                return None
            raise
        return uuid.UUID(response.json()["lease_id"])

    def _say_waiting(self, client) -> None:
        from prefect.states import Running

        message = (f"waiting for a slot: creator {self.creator_id!r} has {self.limit} operations running "
                   f"(BULKOPS_MAX_RUNNING_PER_CREATOR); it starts when one ends, or ends Cancelled "
                   f"(too_many_running) after {self.wait_s:g}s")
        self.logger.warning(message)
        try:
            client.set_flow_run_state(uuid.UUID(self.operation_id), Running(name=AWAITING, message=message),
                                      force=True)
        except Exception as exc:  # noqa: BLE001 - a label: the run waits all the same
            self.logger.warning("could not mark the run as waiting for its slot: %s", exc)

    def _say_running(self, client) -> None:
        from prefect.states import Running

        state = client.read_flow_run(uuid.UUID(self.operation_id)).state
        if state is None or state.type.value != "RUNNING":
            return  # a cancel came meanwhile: leave its state be
        try:
            client.set_flow_run_state(uuid.UUID(self.operation_id), Running(), force=True)
        except Exception as exc:  # noqa: BLE001 - a label
            self.logger.warning("could not mark the run as running again: %s", exc)

    def _renew(self) -> None:
        every = max(self.lease_s / 3.0, 10.0)
        with get_client(sync_client=True) as client:
            while not self._stop_renewal.wait(every):
                try:
                    client.renew_concurrency_lease(self.lease_id, lease_duration=self.lease_s)
                except Exception as exc:  # noqa: BLE001 - the next round tries again
                    self.logger.warning("could not renew the creator slot's lease: %s", exc)

    def release(self) -> None:
        """Give the slot back (nothing to do when it was never taken)."""
        self._stop_renewal.set()
        if self.lease_id is None:
            return
        lease_id, self.lease_id = self.lease_id, None
        try:
            with get_client(sync_client=True) as client:
                client.release_concurrency_slots_with_lease(lease_id)
        except Exception as exc:  # noqa: BLE001 - the lease runs out by itself
            self.logger.warning("could not release the creator slot now (it frees itself within %ss): %s",
                                int(self.lease_s), exc)


class ExclusiveSlot(CreatorSlot):
    """At most one run of an operation of the whole library at once (cleanup): a limit
    named ``bulkops-<operation>`` of one slot, taken with a lease like a creator's, and
    not waited for: a second run ends ``Cancelled`` with ``<operation>_running``."""

    def __init__(self, operation_id: str, operation: str, *, lease_s: float,
                 logger: logging.Logger | logging.LoggerAdapter | None = None):
        super().__init__(operation_id, operation, limit=1, lease_s=lease_s, wait_s=0.0, logger=logger)
        self.name = f"bulkops-{operation}"
        self.operation = operation

    def take(self, stopped: Callable[[], bool]) -> tuple[str | None, str] | None:
        try:
            outcome = self.acquire(stopped)
        except Exception as exc:  # noqa: BLE001 - as for a creator's slot: run rather than not at all
            self.logger.warning("could not take the %s slot (%s: %s); running without it", self.operation,
                                type(exc).__name__, exc)
            return None
        if outcome == "acquired":
            return None
        code = f"{self.operation}_running"
        ended = (code, f"{code}: another {self.operation} is running (one at a time); this one touched nothing")
        self.logger.warning(ended[1])
        return ended


def slot_for(operation_id: str, operation: str, creator_id: str | None, logger=None) -> CreatorSlot | None:
    """The slot a run takes: its creator's, or for an operation of the whole library
    (no creator: cleanup) the one slot of that operation."""
    if creator_id is None:
        from config import get_settings

        return ExclusiveSlot(operation_id, operation, lease_s=get_settings().slot_lease, logger=logger)
    return CreatorSlot.configured(operation_id, creator_id, logger=logger)
