"""cleanup: what crashed, expired or forgotten work left in the library, removed by
rules (``videolib/cleanup.py``), and Prefect's run history moved to storage
(``tasks/history.py``). Deployed on a daily cron (``BULKOPS_CLEANUP_CRON``, UTC).

    bulkops cleanup --dry-run      # what it would do, counts and bytes; changes nothing
    bulkops cleanup                # do it now

It is an operation like the others: it plans its items (scans storage, the database and
Prefect), maps one task over batches of them, shows progress, can be cancelled, and
ends with a result document (``operation: "cleanup"``, ``creator_id: null``) whose
``cleanup`` counts each kind. One runs at a time (the ``bulkops-cleanup`` slot, like a
creator's: a second ends Cancelled with ``cleanup_running``). It never touches a video
that a running operation holds: tombstones of creators whose delete is running wait,
claims of a running reprocess stay, unfinished exports of a running export stay.
"""

# No `from __future__ import annotations` here: Prefect's serve() runner pickles the flow
# function by value, and string annotations could not be resolved in the run's process.

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Annotated, Any

from prefect import flow, get_client, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from config import get_settings
from flows import CLEANUP, FLOW_OPERATIONS
from flows.operation import DRY_RUN_TAG, Operation, Plan
from flows.split import SHARE_FLOW
from tasks.cleanup import cleanup_batch
from tasks.history import FINAL_TYPES, ended_runs
from tasks.liveness import living
from tasks.resources import HOLDERS, engine, store
from videolib.cleanup import (
    COUNTS,
    Rules,
    find_claims,
    find_exports,
    find_manifests,
    find_orphans,
    find_reports,
    find_tombstones,
    find_trash,
    orphan_creators,
)
from videolib.delete import write_manifest
from videolib.operation import BATCH_ERROR, ItemError, OperationResult, effective_batch_size
from videolib.records import read_record, record_key
from videolib.staging import drop_staged, staged_operations

log = logging.getLogger(__name__)

KINDS = ("tombstone", "trash", "claim", "export", "leftover", "report", "manifest", "orphan", "run")


def run_name() -> str:
    return f"cleanup-{DRY_RUN_TAG}" if flow_run.parameters.get("dry_run") else "cleanup"


@flow(
    name=CLEANUP,
    flow_run_name=run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=get_settings().task_workers),
    validate_parameters=True,
)
def cleanup(
    dry_run: bool = False,
    batch_size: Annotated[int, Field(ge=1, le=100_000)] | None = None,
):
    """Remove what crashed, expired or forgotten work left: tombstones, stale claims,
    expired exports and their leftovers, old reports and audit manifests, orphaned
    objects (reported unless BULKOPS_CLEANUP_DELETE_ORPHANS), and Prefect run history
    past BULKOPS_HISTORY_RETENTION (kept as records in storage).

    Args:
        dry_run: Report what would be done (counts and bytes) and change nothing.
        batch_size: Items per batch (default BULKOPS_BATCH_SIZE, 1000); grows automatically so one run maps at most a few hundred batches.
    """
    settings = get_settings()
    rules = Rules.from_settings(settings)
    operation = Operation(CLEANUP, None, dry_run=dry_run)
    operation.result.cleanup = dict.fromkeys(COUNTS, 0)  # in the document however the run ends
    if not dry_run:  # the tombstones it finished, read back as gone (videolib/delete.py)
        operation.result.verified = {"videos": 0, "objects_absent": 0, "rows_absent": 0}
    flow_operations: dict[str, str] = {}
    kinds: list[str] = []
    tombstone_objects = [0]

    def prepare(result: OperationResult) -> Plan:
        if dry_run:
            result.plan = {"items": 0, "objects": 0, "bytes": 0}
        found = scan(result, rules, operation.operation_id, flow_operations, settings)
        size = batch_size or settings.batch_size
        share = max(1, settings.max_batches // max(1, sum(1 for items in found.values() if items)))
        batches: list[dict[str, Any]] = []
        for kind in KINDS:
            items = found.get(kind, [])
            step = effective_batch_size(len(items), size, share)
            batches += [{"kind": kind, "items": items[i:i + step]} for i in range(0, len(items), step)]
        kinds.extend(batch["kind"] for batch in batches)
        result.requested = sum(len(batch["items"]) for batch in batches)
        return Plan(batches=batches, sizes=[len(batch["items"]) for batch in batches],
                    failed_items=lambda i, detail: [ItemError(label(batches[i]["kind"], item), BATCH_ERROR, detail)
                                                    for item in batches[i]["items"]])

    def on_outcome(index: int, outcome) -> None:
        if kinds[index] in ("tombstone", "trash"):
            tombstone_objects[0] += outcome.objects

    def finish(result: OperationResult, started_at: float) -> None:
        counts = result.cleanup or {}
        finished = counts.get("tombstones_finished", 0) + counts.get("trash_purged", 0)
        if dry_run or not finished:
            return
        # The tombstones cleanup finished and the trash it purged are in an audit
        # manifest, as a delete's are.
        result.manifest_path = write_manifest(
            store(), operation_id=result.operation_id, creator_id=None,
            started_at=datetime.fromtimestamp(started_at, UTC).isoformat(), finished_at=datetime.now(UTC).isoformat(),
            videos_deleted=finished, objects_removed=tombstone_objects[0], batches=result.batches)

    return operation.run(
        prepare=prepare,
        batch_task=cleanup_batch,
        task_kwargs={"rules": rules.to_dict(), "flow_operations": flow_operations, "dry_run": dry_run},
        batch_size=batch_size or settings.batch_size,
        on_outcome=on_outcome,
        finish=finish,
    )


def label(kind: str, item: Any) -> str:
    """How an item is named in the errors (``video_id`` holds a video id, a storage key or a run id)."""
    if kind in ("tombstone", "trash"):
        return item[1]
    return item if isinstance(item, str) else item[0]


def scan(result: OperationResult, rules: Rules, operation_id: str, flow_operations: dict[str, str],
         settings) -> dict[str, list[Any]]:
    """Everything due now, by kind; counts the orphans found (kept or not)."""
    logger = get_run_logger()
    began = time.monotonic()
    found: dict[str, list[Any]] = {}
    busy = running_creators("bulk-delete")
    found["tombstone"] = find_tombstones(engine(), rules, skip_creators=busy)
    found["trash"] = find_trash(engine(), rules)
    found["claim"] = find_claims(engine(), operation_id, rules, HOLDERS)
    expired, leftovers = find_exports(store(), rules, expiry=link_expiry, runs=HOLDERS)
    found["export"] = [[key] for key in expired]
    reports, temporary = find_reports(store(), rules)
    manifests, uploads = find_manifests(store(), rules)
    found["leftover"] = [[key] for key in leftovers + temporary + uploads]
    found["report"] = reports
    found["manifest"] = manifests
    orphans = scan_orphans(rules, workers=settings.task_workers)
    result.cleanup["orphans_found"] = len(orphans)
    if rules.delete_orphans:
        found["orphan"] = orphans
    elif orphans:
        logger.warning("%s orphaned videos (objects with no row, older than %ss) are kept: set "
                       "BULKOPS_CLEANUP_DELETE_ORPHANS=true to remove them; e.g. %s", len(orphans),
                       int(rules.orphan_grace), orphans[0][0].rsplit("/", 1)[0] + "/")
    if not result.dry_run:
        drop_ended_staging()
    found["run"] = history_items(operation_id, flow_operations, settings.history_retention, rules.now)
    logger.info("cleanup found in %.1fs: %s", time.monotonic() - began,
                ", ".join(f"{len(items)} {kind}" for kind, items in found.items()))
    return found


def drop_ended_staging() -> None:
    """The staged manifest ids of runs that ended without removing them (killed)."""
    operations = staged_operations(engine())
    ended = HOLDERS.finished(operations) if operations else set()
    for operation_id in ended:
        drop_staged(engine(), operation_id)
    if ended:
        get_run_logger().info("dropped the staged manifest ids of %s ended runs", len(ended))


def link_expiry(operation_id: str) -> float | None:
    """When the export's download link expired, from its record (None: no record)."""
    try:
        record = read_record(store(), operation_id)
        expires = ((record or {}).get("output") or {}).get("expires_at")
        return datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp() if expires else None
    except (ValueError, AttributeError, OSError):
        return None


def scan_orphans(rules: Rules, *, workers: int) -> list[list[str]]:
    """Every creator folder's orphans, a few folders listed at once (S3 answers in parallel)."""
    folders = orphan_creators(store())

    def one(folder: str) -> list[list[str]]:
        try:
            return find_orphans(engine(), store(), folder, rules)
        except ValueError as exc:  # a folder name no key may have: nothing of ours lives there
            log.warning("skipped videos/%s: %s", folder[:80], exc)
            return []

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(folders) or 1))) as pool:
        return [group for groups in pool.map(one, folders) for group in groups]


def running_creators(flow_name: str) -> set[str]:
    """The creators with a run of ``flow_name`` that has not ended and is alive: a run
    left Running by a process that died without a word (no heartbeat for a while) is
    marked Crashed instead (``tasks/liveness.py``), and its tombstones are cleanup's."""
    from prefect.client.schemas.objects import FlowRun

    with get_client(sync_client=True) as client:
        runs = FlowRun.model_validate_list(client.request("POST", "/flow_runs/filter", json={
            "flows": {"name": {"any_": [flow_name]}},
            "flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING", "CANCELLING", "PAUSED"]}}},
            "limit": 200}).json())
        runs = living(client, runs, found_by="bulkops cleanup, before finishing its tombstones")
    return {(run.parameters or {}).get("creator_id") for run in runs} - {None}


def history_items(operation_id: str, flow_operations: dict[str, str], retention_s: float,
                  now: float) -> list[list[str]]:
    """``[run id, "prune"]`` for every ended bulkops run older than the retention,
    ``[run id, "archive"]`` for a newer ended run that has no record in storage (it
    crashed before writing it), and ``[run id, "drop"]`` for the ended share runs of split
    operations older than the retention (not operations: no record, their parent has
    the result). Fills ``flow_operations`` (flow id -> operation)."""
    cutoff = datetime.fromtimestamp(now - retention_s, UTC).isoformat()
    with get_client(sync_client=True) as client:
        flows = client.request("POST", "/flows/filter", json={
            "flows": {"name": {"any_": sorted(FLOW_OPERATIONS) + [SHARE_FLOW]}}, "limit": 200}).json()
        shares = {flow["id"]: "share" for flow in flows if flow["name"] == SHARE_FLOW}
        flow_operations.update({flow["id"]: FLOW_OPERATIONS[flow["name"]] for flow in flows if flow["id"] not in shares})
        old = [str(run.id) for run in ended_runs(client, flow_operations, ended_before=cutoff)]
        dropped = [str(run.id) for run in ended_runs(client, shares, ended_before=cutoff)]
        recent = [str(run.id) for run in ended_runs(client, flow_operations,
                                                    state_types=tuple(t for t in FINAL_TYPES if t != "COMPLETED"))]
    old = [run_id for run_id in old if run_id != operation_id]
    doomed = set(old)
    candidates = [run_id for run_id in recent if run_id not in doomed and run_id != operation_id]
    have = store().sizes([record_key(run_id) for run_id in candidates]) if candidates else {}
    missing = [run_id for run_id in candidates if have.get(record_key(run_id)) is None]
    return ([[run_id, "prune"] for run_id in old] + [[run_id, "archive"] for run_id in missing]
            + [[run_id, "drop"] for run_id in dropped])
