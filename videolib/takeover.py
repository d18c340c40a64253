"""Who may take over a claim another run left on a video: the one rule every operation
uses (reprocess claims today; cleanup releases claims by the same rule).

A video ``processing`` under a claim of run R (``videos.processing_by = R``) may be
taken by another operation

- at once when R has ended (its Prefect run is in a final state: Completed, Failed,
  Cancelled or Crashed), whatever R left behind (a SIGKILL, a lost machine: Prefect
  marks such a run Crashed once its heartbeats stop, see the README);
- otherwise once the claim is older than the lease (R may still be working on it).

A claim of the asking operation itself (a retried batch) is always its own to take.
``processing`` without a holder is another pipeline's work (an upload): never taken.

Whether a run has ended is the orchestrator's knowledge: the caller passes a
:class:`Holders` that answers it (``tasks.resources.PrefectHolders``); without one,
only the lease counts.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import and_, case, false, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from videolib.db.models import Video


class Holders(Protocol):
    """Answers which of the given run ids have ended (are in a final state)."""

    def finished(self, run_ids: Collection[str]) -> Collection[str]: ...


@dataclass(frozen=True)
class Takeover:
    """The decision for one operation at one moment: its own id, the lease's cutoff, and
    the holders known to have ended."""

    operation_id: str
    cutoff: datetime
    ended: frozenset[str] = field(default_factory=frozenset)

    def may_take(self, holder: str | None, updated_at: datetime | None) -> bool:
        """Whether a ``processing`` video held by ``holder`` (claimed or renewed at
        ``updated_at``) may be taken now."""
        if holder is None:
            return False
        if holder == self.operation_id or holder in self.ended:
            return True
        if updated_at is None:
            return True
        updated = updated_at if updated_at.tzinfo else updated_at.replace(tzinfo=UTC)
        return updated < self.cutoff

    def sql(self) -> ColumnElement[bool]:
        """The same rule as a SQL condition on ``videos`` (for a ``processing`` row)."""
        ended = Video.processing_by.in_(sorted(self.ended)) if self.ended else false()
        return or_(
            Video.processing_by == self.operation_id,
            ended,
            and_(Video.processing_by.is_not(None), Video.updated_at < self.cutoff),
        )


def decide_takeover(conn: Connection, *, creator_id: str | None, operation_id: str, lease_s: int,
                    holders: Holders | None = None, now: datetime | None = None) -> Takeover:
    """The takeover rule for ``operation_id`` on ``creator_id``'s videos now: asks
    ``holders`` about the runs that hold any of them within their lease (one query for
    the distinct holders, one question to the orchestrator). ``creator_id`` None: every
    creator's (cleanup)."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=lease_s)
    if holders is None:
        return Takeover(operation_id, cutoff)
    query = select(Video.processing_by).distinct().where(
        *([Video.creator_id == creator_id] if creator_id is not None else []),
        Video.status == "processing",
        Video.processing_by.is_not(None),
        Video.processing_by != operation_id,
        Video.updated_at >= cutoff,
    )
    candidates = {holder for holder in conn.execute(query).scalars() if holder}
    ended = frozenset(holders.finished(candidates)) & candidates if candidates else frozenset()
    return Takeover(operation_id, cutoff, ended)


def released_status():
    """The status a claim gives back when it ends without its run's say (SQL): ``ready``
    for a video that was ever embedded, ``failed`` for one never embedded. What cleanup
    releases, and what a restore gives back for a video trashed under a claim."""
    return case((Video.embedded_at.is_(None), "failed"), else_="ready")
