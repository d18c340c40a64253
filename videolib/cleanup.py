"""Cleanup: what crashed, expired or forgotten work left in a library, found by rules
and removed in batches (the ``cleanup`` flow, ``flows/cleanup.py``, runs them daily).

Each kind of item has its rule (ages come from the settings, ``Rules``):

- ``tombstone``: a video left ``deleting`` (by a crashed delete) for longer than the
  tombstone grace is finished exactly as a delete would (``videolib.delete.delete_batch``:
  objects, then the audit manifest entry, then the row);
- ``claim``: a reprocess claim whose holding run has ended, or whose lease has passed
  and whose holder is not known to be running, is released (the takeover rule of
  ``videolib/takeover.py``): the video keeps its old chunks and is ``ready`` again (or
  ``failed`` when it was never embedded);
- ``export``: an export file whose download link expired more than the export grace
  ago; ``leftover``: the part files and unfinished files of an export that has ended
  (or has written nothing for 15 minutes and is not running), and the temporary
  files a crash left beside an object being written;
- ``report``: error reports, audit manifests and set-aside malformed ids older than
  the report retention;
- ``orphan``: objects under ``videos/{creator}/{video}/`` for which no row has that id,
  none of them younger than the orphan grace (an upload in flight is younger):
  reported, and deleted only when ``BULKOPS_CLEANUP_DELETE_ORPHANS`` is set.

Nothing here knows the orchestrator: the caller says which runs have ended and which
are alive (``Runs``). The flow also archives and prunes Prefect's run history.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Engine, select, update

from videolib.db.models import Video
from videolib.delete import delete_batch, plan_delete_batch
from videolib.export.plan import export_leftovers
from videolib.operation import NOT_FOUND, STORAGE_ERROR, BatchOutcome, ItemError
from videolib.selection import chunked
from videolib.storage import ObjectStore
from videolib import trash
from videolib.takeover import decide_takeover, released_status

COUNTS = ("tombstones_finished", "claims_released", "exports_expired", "parts_removed", "reports_expired",
          "manifests_expired", "orphans_found", "orphans_deleted", "runs_archived", "runs_pruned", "trash_purged")
# What each kind of item counts under in the result's "cleanup".
COUNTED_AS = {"tombstone": "tombstones_finished", "claim": "claims_released", "export": "exports_expired",
              "leftover": "parts_removed", "report": "reports_expired", "manifest": "manifests_expired",
              "orphan": "orphans_deleted",
              "run": "runs_pruned", "trash": "trash_purged"}
ALREADY_DONE = "already_done"  # an item someone else finished between the plan and its batch
LEFTOVER_IDLE_S = 15 * 60  # an unfinished object untouched this long belongs to nothing running
_EXPORT_FILE = re.compile(r"^exports/[^/]+/(?P<op>[0-9a-f-]{36})\.(?:parquet|csv)$")
_TEMPORARY = re.compile(r"(?:^|/)\.[^/]+\.\d+\.\d+\.tmp$")  # ObjectStore.put's name while it writes
_AUDIT = re.compile(r"^audit/delete/(?P<op>[^/]+)/")
_MANIFEST = re.compile(r"^manifests/[^/]+/[A-Za-z0-9][^/]*$")  # uploaded id manifests (videolib/manifests.py)
_UPLOAD = re.compile(r"^manifests/[^/]+/\.upload-")  # an upload that never finished
_REPORT = re.compile(r"^(?:reports/[^/]+\.csv|requests/[^/]+/invalid-ids-[0-9a-f]+\.json)$")


class Runs(Protocol):
    """What the orchestrator knows of the runs named in the library: which have ended,
    which are alive (not in a final state)."""

    def finished(self, run_ids: Collection[str]) -> Collection[str]: ...

    def alive(self, run_ids: Collection[str]) -> Collection[str]: ...


@dataclass(frozen=True)
class Rules:
    """When an item is due, in seconds (the ``BULKOPS_CLEANUP_*`` settings), at ``now``."""

    now: float
    tombstone_grace: float = 3600.0
    export_grace: float = 86400.0
    report_retention: float = 90 * 86400.0
    orphan_grace: float = 86400.0
    delete_orphans: bool = False
    link_ttl: float = 86400.0  # an export file without a record: its link lived this long
    lease_s: int = 3600
    delete_grace: float = 0.0  # the undo window of deletes (BULKOPS_DELETE_GRACE)

    @classmethod
    def from_settings(cls, settings: Any, now: float | None = None) -> Rules:
        return cls(now=time.time() if now is None else now, tombstone_grace=settings.cleanup_tombstone_grace,
                   export_grace=settings.cleanup_export_grace, report_retention=settings.cleanup_report_retention,
                   orphan_grace=settings.cleanup_orphan_grace, delete_orphans=settings.cleanup_delete_orphans,
                   lease_s=settings.reprocess_lease_s, delete_grace=settings.delete_grace)

    def before(self, seconds: float) -> datetime:
        return datetime.fromtimestamp(self.now - seconds, UTC)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------- finding


def find_tombstones(engine: Engine, rules: Rules, *, skip_creators: Collection[str] = ()) -> list[list[str]]:
    """``[creator_id, video_id]`` of every video ``deleting`` for longer than the grace,
    but those of creators whose delete is running now (it is finishing them)."""
    query = (select(Video.creator_id, Video.id)
             .where(Video.status == "deleting", Video.updated_at < rules.before(rules.tombstone_grace))
             .order_by(Video.creator_id, Video.id))
    with engine.connect() as conn:
        return [[creator, vid] for creator, vid in conn.execute(query) if creator not in skip_creators]


def find_trash(engine: Engine, rules: Rules) -> list[list[str]]:
    """``[creator_id, video_id]`` of every trashed video whose undo window has closed."""
    return trash.find_trash(engine, grace_s=rules.delete_grace, now=datetime.fromtimestamp(rules.now, UTC))


def claim_rule(conn, operation_id: str, rules: Rules, runs: Runs | None):
    """The takeover rule over every creator's claims, and the holders known alive
    (whose claims cleanup leaves even past their lease)."""
    rule = decide_takeover(conn, creator_id=None, operation_id=operation_id, lease_s=rules.lease_s,
                           holders=runs, now=datetime.fromtimestamp(rules.now, UTC))
    holders = set(conn.execute(select(Video.processing_by).distinct().where(
        Video.status == "processing", Video.processing_by.is_not(None))).scalars())
    alive = set(runs.alive(holders - rule.ended)) if runs is not None and holders else set()
    return rule, alive


def find_claims(engine: Engine, operation_id: str, rules: Rules, runs: Runs | None) -> list[str]:
    """Ids of the videos under a claim cleanup may release now."""
    with engine.connect() as conn:
        rule, alive = claim_rule(conn, operation_id, rules, runs)
        query = select(Video.id, Video.processing_by).where(Video.status == "processing", rule.sql()).order_by(Video.id)
        return [vid for vid, holder in conn.execute(query) if holder not in alive]


def find_exports(store: ObjectStore, rules: Rules, *, expiry: Callable[[str], float | None],
                 runs: Runs | None) -> tuple[list[str], list[str]]:
    """(expired export files, leftover objects) under ``exports/``. ``expiry(operation_id)``
    is when the export's link expired (from its record), None when unknown (then the
    file's age and the default link lifetime decide)."""
    listing = store.list_modified("exports")
    expired = []
    for key, modified in listing.items():
        match = _EXPORT_FILE.match(key)
        if match is None:
            continue
        expires = expiry(match.group("op"))
        if (expires if expires is not None else modified + rules.link_ttl) + rules.export_grace < rules.now:
            expired.append(key)
    leftovers = export_leftovers(listing)
    ended = set(runs.finished(list(leftovers))) if runs is not None and leftovers else set()
    alive = set(runs.alive(list(leftovers))) if runs is not None and leftovers else set()
    doomed = [key for op, (keys, newest) in leftovers.items()
              if op in ended or (op not in alive and rules.now - newest > LEFTOVER_IDLE_S) for key in keys]
    doomed += temporary_files(listing, rules)
    return sorted(expired), sorted(doomed)


def temporary_files(listing: dict[str, float], rules: Rules) -> list[str]:
    """The temporary files of writes a crash interrupted (``.<name>.<pid>.<thread>.tmp``)."""
    return [key for key, modified in listing.items()
            if _TEMPORARY.search(key) and rules.now - modified > LEFTOVER_IDLE_S]


def find_reports(store: ObjectStore, rules: Rules) -> tuple[list[list[str]], list[str]]:
    """(reports and audit manifests past the retention, each a list of its keys; the
    temporary files left among them). A delete's audit manifest goes whole, once its
    newest part is past the retention."""
    cutoff = rules.now - rules.report_retention
    due: list[list[str]] = []
    temporary: list[str] = []
    for prefix in ("reports", "requests"):
        listing = store.list_modified(prefix)
        due += [[key] for key, modified in sorted(listing.items()) if _REPORT.match(key) and modified < cutoff]
        temporary += temporary_files(listing, rules)
    manifests: dict[str, tuple[list[str], float]] = {}
    listing = store.list_modified("audit")
    for key, modified in sorted(listing.items()):
        match = _AUDIT.match(key)
        if match:
            keys, newest = manifests.get(match.group("op"), ([], 0.0))
            keys.append(key)
            manifests[match.group("op")] = (keys, max(newest, modified))
    due += [keys for keys, newest in manifests.values() if newest < cutoff]
    return due, temporary + temporary_files(listing, rules)


def find_manifests(store: ObjectStore, rules: Rules) -> tuple[list[list[str]], list[str]]:
    """(uploaded id manifests past the report retention; uploads left unfinished, idle
    for a while). A manifest is read only while its run plans, and an upload of the same
    ids again renews it."""
    listing = store.list_modified("manifests")
    cutoff = rules.now - rules.report_retention
    due = [[key] for key, modified in sorted(listing.items()) if _MANIFEST.match(key) and modified < cutoff]
    unfinished = [key for key, modified in sorted(listing.items())
                  if _UPLOAD.match(key) and rules.now - modified > LEFTOVER_IDLE_S]
    return due, unfinished + temporary_files(listing, rules)


def find_orphans(engine: Engine, store: ObjectStore, creator_id: str, rules: Rules) -> list[list[str]]:
    """The orphans under ``videos/{creator_id}/``: for each video prefix whose id no row
    has and whose objects are all older than the orphan grace, its keys."""
    groups: dict[str, tuple[list[str], float]] = {}
    for key, modified in store.list_modified(f"videos/{creator_id}").items():
        parts = key.split("/")
        if len(parts) < 4:
            continue  # an object right under videos/{creator}/ belongs to no video
        keys, newest = groups.get(parts[2], ([], 0.0))
        keys.append(key)
        groups[parts[2]] = (keys, max(newest, modified))
    old = [vid for vid, (_keys, newest) in groups.items() if rules.now - newest > rules.orphan_grace]
    with engine.connect() as conn:
        known = existing_ids(conn, old)
    return [sorted(groups[vid][0]) for vid in sorted(old) if vid not in known]


def existing_ids(conn, ids: list[str]) -> set[str]:
    """Which of ``ids`` a row has (whatever its creator or status: never an orphan)."""
    found: set[str] = set()
    for part in chunked([vid for vid in ids if len(vid) <= 36]):
        found.update(conn.execute(select(Video.id).where(Video.id.in_(part))).scalars())
    return found


def orphan_creators(store: ObjectStore) -> list[str]:
    """The creators' folders under ``videos/`` (a folder that is not a creator id holds orphans too)."""
    return store.list_children("videos")


# ----------------------------------------------------------------------------- acting


def finish_tombstones(engine: Engine, store: ObjectStore, items: list[list[str]], rules: Rules, *,
                      operation_id: str, batch_index: int, dry_run: bool, lock_timeout_ms: int = 5000,
                      ticker=None, retried: bool = False) -> BatchOutcome:
    """Finish the tombstones of one batch (``[creator, video]`` pairs, one creator or
    several) as a delete would. Those no longer ``deleting`` are left out as done, and on
    a first attempt those marked again since the grace (a delete of the creator begun
    since the scan finishes them); on a retry of the batch (``retried``) those are its
    first attempt's, and finished."""
    by_creator: dict[str, list[str]] = {}
    for creator_id, vid in items:
        by_creator.setdefault(creator_id, []).append(vid)
    total = BatchOutcome()
    for creator_id, ids in by_creator.items():
        with engine.connect() as conn:
            found: dict[str, Any] = {}
            old = (Video.updated_at < rules.before(rules.tombstone_grace)).label("old")
            for part in chunked(ids):
                found.update((row.id, row) for row in conn.execute(
                    select(Video.id, Video.status, old).where(Video.id.in_(part))))
        # Gone goes to the delete too: an earlier attempt of this batch may have finished
        # it, and the delete counts those as this batch's (its audit part says so), the
        # others as not found, done by someone else. The delete's compare-and-set counts
        # each video once whoever else finishes it.
        due = [vid for vid in ids if vid not in found
               or (found[vid].status == "deleting" and (retried or found[vid].old))]
        if len(due) < len(ids):
            total.not_selected[ALREADY_DONE] = total.not_selected.get(ALREADY_DONE, 0) + len(ids) - len(due)
        if not due:
            continue
        if dry_run:
            outcome = plan_delete_batch(engine, store, creator_id=creator_id, video_ids=due)
        else:
            outcome = delete_batch(engine, store, creator_id=creator_id, video_ids=due, operation_id=operation_id,
                                   batch_index=batch_index, lock_timeout_ms=lock_timeout_ms, ticker=ticker)
        merge(total, not_found_is_done(outcome))
    return counted(total, "tombstone")


def purge_trash(engine: Engine, store: ObjectStore, items: list[list[str]], rules: Rules, *, operation_id: str,
                batch_index: int, dry_run: bool, lock_timeout_ms: int = 5000, ticker=None) -> BatchOutcome:
    """Purge trashed videos whose window has closed, as a delete would (objects, audit
    manifest, rows, the read-back proof). One restored since the plan is left alone
    (the purge's compare-and-set), and counted as done."""
    by_creator: dict[str, list[str]] = {}
    for creator_id, vid in items:
        by_creator.setdefault(creator_id, []).append(vid)
    due = rules.before(rules.delete_grace)
    total = BatchOutcome()
    for creator_id, ids in by_creator.items():
        if dry_run:
            outcome = plan_delete_batch(engine, store, creator_id=creator_id, video_ids=ids, purge_before=due)
        else:
            outcome = delete_batch(engine, store, creator_id=creator_id, video_ids=ids, operation_id=operation_id,
                                   batch_index=batch_index, lock_timeout_ms=lock_timeout_ms, ticker=ticker,
                                   purge_before=due)
            missing = [e.video_id for e in outcome.errors if e.error == NOT_FOUND]
            marked = _tombstones_among(engine, creator_id, missing) if missing else set()
            if marked:
                # A retry of this batch: its first attempt marked these 'deleting' (only a
                # purge marks trashed videos) and died before their rows went. Tombstones
                # now, finished as such.
                outcome.errors = [e for e in outcome.errors if e.video_id not in marked]
                merge(outcome, delete_batch(engine, store, creator_id=creator_id, video_ids=sorted(marked),
                                            operation_id=operation_id, batch_index=batch_index,
                                            lock_timeout_ms=lock_timeout_ms, ticker=ticker))
        merge(total, not_found_is_done(outcome))
    return counted(total, "trash")


def _tombstones_among(engine: Engine, creator_id: str, ids: list[str]) -> set[str]:
    """Which of ``ids`` are the creator's tombstones (``deleting``)."""
    found: set[str] = set()
    with engine.connect() as conn:
        for part in chunked(ids):
            found.update(conn.execute(select(Video.id).where(
                Video.creator_id == creator_id, Video.id.in_(part), Video.status.concat("") == "deleting")).scalars())
    return found


def release_claims(engine: Engine, ids: list[str], rules: Rules, runs: Runs | None, *, operation_id: str,
                   dry_run: bool) -> BatchOutcome:
    """Release the stale claims among ``ids`` (compare-and-set: a claim renewed or
    ended since the plan is left alone, and counted as done)."""
    released: list[str] = []
    with engine.begin() as conn:
        rule, alive = claim_rule(conn, operation_id, rules, runs)
        alive_clause = [Video.processing_by.not_in(sorted(alive))] if alive else []
        for part in chunked(ids):
            where = [Video.id.in_(part), Video.status == "processing", rule.sql(), *alive_clause]
            if dry_run:
                released += conn.execute(select(Video.id).where(*where)).scalars()
                continue
            released += conn.execute(
                update(Video).where(*where)
                .values(status=released_status(), processing_by=None,
                        updated_at=datetime.now(UTC))
                .returning(Video.id)).scalars()
    outcome = BatchOutcome(succeeded=released)
    if len(released) < len(ids):
        outcome.not_selected[ALREADY_DONE] = len(ids) - len(released)
    return counted(outcome, "claim")


def remove_objects(store: ObjectStore, kind: str, groups: list[list[str]], *, dry_run: bool,
                   check: Callable[[list[list[str]]], set[int]] | None = None) -> BatchOutcome:
    """Remove groups of objects (one item each: an export file, a report, a delete's
    audit manifest, an orphan video's objects). ``check`` names the groups that must be
    kept after all (an orphan whose row appeared since the plan)."""
    keep = check(groups) if check is not None else set()
    acting = [group for i, group in enumerate(groups) if i not in keep]
    sizes = store.sizes([key for group in acting for key in group])
    outcome = BatchOutcome(objects=sum(1 for s in sizes.values() if s is not None),
                           bytes=sum(s for s in sizes.values() if s))
    if keep:
        outcome.not_selected[ALREADY_DONE] = len(keep)
    failures = {} if dry_run else store.delete_many([key for group in acting for key in group])
    for group in acting:
        failed = [key for key in group if key in failures]
        if failed:
            detail = "; ".join(f"{key}: {failures[key]}" for key in failed)[:500]
            outcome.errors.append(ItemError(group[0], STORAGE_ERROR, f"not removed: {detail}"))
        else:
            outcome.succeeded.append(group[0])
    return counted(outcome, kind)


def orphans_still(engine: Engine) -> Callable[[list[list[str]]], set[int]]:
    """For :func:`remove_objects`: the orphan groups whose video now has a row."""
    def check(groups: list[list[str]]) -> set[int]:
        ids = [group[0].split("/")[2] for group in groups]
        with engine.connect() as conn:
            known = existing_ids(conn, ids)
        return {i for i, vid in enumerate(ids) if vid in known}
    return check


def counted(outcome: BatchOutcome, kind: str) -> BatchOutcome:
    """The batch's count under its name in the result's ``cleanup``."""
    outcome.extra["cleanup"] = {COUNTED_AS[kind]: outcome.n_succeeded}
    return outcome


def merge(total: BatchOutcome, outcome: BatchOutcome) -> None:
    total.succeeded += outcome.succeeded
    total.errors += outcome.errors
    total.objects += outcome.objects
    total.bytes += outcome.bytes
    for reason, n in outcome.not_selected.items():
        total.not_selected[reason] = total.not_selected.get(reason, 0) + n
    if "verified" in outcome.extra:
        counts = total.extra.setdefault("verified", {})
        for name, n in outcome.extra["verified"].items():
            counts[name] = counts.get(name, 0) + n


def not_found_is_done(outcome: BatchOutcome) -> BatchOutcome:
    """A tombstone another operation finished meanwhile is done, not a failure."""
    done = [e for e in outcome.errors if e.error == NOT_FOUND]
    if done:
        outcome.errors = [e for e in outcome.errors if e.error != NOT_FOUND]
        outcome.not_selected[ALREADY_DONE] = outcome.not_selected.get(ALREADY_DONE, 0) + len(done)
    return outcome
