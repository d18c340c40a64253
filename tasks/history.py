"""What an operation's run leaves in Prefect, read back, and the run's history moved
out of Prefect into storage.

A run keeps its counts and its result document as JSON in its artifacts
(``flows/progress.py``, ``flows/result.py``): :func:`result_of` and :func:`progress_of`
read them (``service/status`` builds the status document from them). Runs recorded
before the counts and the document were stored as JSON kept them only in the text of
their artifacts: :func:`_old_result` and :func:`_old_progress` read that form.

Cleanup archives and prunes (:func:`archive_and_prune`): every ended run gets its record
in storage (``operations/{id}.json``, ``videolib/records.py``; the operation writes it
as it ends, cleanup writes it for a run that crashed before it could), and a run older
than ``BULKOPS_HISTORY_RETENTION`` is deleted from Prefect with its artifacts once its
record is in storage and listed in the index of pruned runs (``videolib/records.py``).
Status and the operation list then answer from the record.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from videolib.operation import BatchOutcome, ItemError, OperationResult
from videolib.records import read_record, record_key, write_index, write_record

RESULT_ARTIFACT_TYPE = "bulkops-result"
RESULT_ARTIFACT_DESCRIPTION = "bulkops result document"
PROGRESS_KEY = "bulkops_progress"  # the progress artifact's metadata key holding the JSON
FINAL_TYPES = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
_PAGE = 200  # Prefect's own most per filter call


def result_of(artifacts: list) -> dict[str, Any] | None:
    """The result document among a run's artifacts (newest first), if it wrote one."""
    for artifact in artifacts:
        if artifact.type == RESULT_ARTIFACT_TYPE and isinstance(artifact.data, dict):
            return artifact.data
    return _old_result(artifacts)


def progress_of(artifacts: list) -> dict[str, Any] | None:
    """The counts of the run's progress artifact (``current``, ``total``, ``eta_seconds``...)."""
    for artifact in artifacts:  # newest first: the run's only progress artifact
        if artifact.type == "progress":
            raw = (artifact.metadata_ or {}).get(PROGRESS_KEY)
            return json.loads(raw) if raw is not None else _old_progress(artifact)
    return None


def artifacts_of(client, run_ids: list[str]) -> dict[str, list]:
    """Every artifact of these runs, newest first per run, in as few calls as Prefect allows."""
    from prefect.client.schemas.objects import Artifact

    artifacts: dict[str, list] = {i: [] for i in run_ids}
    offset = 0
    while run_ids:
        chunk = Artifact.model_validate_list(client.request("POST", "/artifacts/filter", json={
            "artifacts": {"flow_run_id": {"any_": run_ids}}, "sort": "CREATED_DESC", "limit": _PAGE,
            "offset": offset}).json())
        for artifact in chunk:
            artifacts[str(artifact.flow_run_id)].append(artifact)
        if len(chunk) < _PAGE:
            break
        offset += _PAGE
    return artifacts


def record_of(run, operation: str, artifacts: list) -> dict[str, Any]:
    """The record of an ended run: the result document it wrote; for a run that ended
    without one (it crashed, or was cancelled before it started), a document saying
    so, with how far its progress had got (never invented counts)."""
    result = result_of(artifacts)
    if result is not None:
        return result
    parameters = run.parameters or {}
    state = run.state
    progress = progress_of(artifacts) or {}
    current, total = int(progress.get("current", 0)), int(progress.get("total", 0))
    how = f"{state.type.value.capitalize()}" if state else "without a state"
    message = f"the run ended {how} without writing its result"
    if state is not None and state.message:
        message += f" ({state.message.strip()[:300]})"
    if progress:
        message += (f"; its progress had reached {current} of {total} items (what they were is in the "
                    "operation's audit manifest or report, if it wrote one)")
    document = OperationResult(operation_id=str(run.id), operation=operation, creator_id=parameters.get("creator_id"),
                               dry_run=parameters.get("dry_run") is True, message=message, requested=total,
                               skipped=total, aborted=state is None or state.type.value != "CANCELLED",
                               cancelled=state is not None and state.type.value == "CANCELLED").to_dict()
    if progress:
        document["progress_at_end"] = {"current": current, "total": total}
    document["archived_by_cleanup"] = True
    return document


def ended_runs(client, flow_ids: dict[str, str], *, ended_before: str | None = None,
               state_types: tuple[str, ...] = FINAL_TYPES) -> list:
    """The runs of these flows (``{flow id: operation}``) in these final states (and
    ended before the ISO time ``ended_before``), oldest first."""
    from prefect.client.schemas.objects import FlowRun

    runs_filter: dict[str, Any] = {"state": {"type": {"any_": list(state_types)}}}
    if ended_before is not None:
        runs_filter["end_time"] = {"before_": ended_before}
    runs, offset = [], 0
    while flow_ids:
        page = FlowRun.model_validate_list(client.request("POST", "/flow_runs/filter", json={
            "flows": {"id": {"any_": list(flow_ids)}}, "flow_runs": runs_filter, "sort": "END_TIME_DESC",
            "limit": _PAGE, "offset": offset}).json())
        runs.extend(page)
        if len(page) < _PAGE:
            break
        offset += _PAGE
    return runs[::-1]


def archive_and_prune(store, items: list[list[str]], *, flow_operations: dict[str, str],
                      dry_run: bool) -> BatchOutcome:
    """For each ``[run id, "archive" | "prune" | "drop"]``: write the run's record when
    storage has none (``runs_archived``), and with ``prune`` delete the run and its
    artifacts from Prefect once the record is there (``runs_pruned``); ``drop`` deletes a
    run that is no operation (a split operation's share) with no record. Idempotent: a
    run already gone counts as done."""
    from prefect import get_client
    from prefect.client.schemas.objects import FlowRun

    ids = [run_id for run_id, _ in items]
    have = store.sizes([record_key(run_id) for run_id in ids])
    outcome = BatchOutcome()
    archived = pruned = 0
    with get_client(sync_client=True) as client:
        runs = {str(run.id): run for run in FlowRun.model_validate_list(client.request("POST", "/flow_runs/filter", json={
            "flow_runs": {"id": {"any_": ids}}, "limit": _PAGE}).json())}
        artifacts = artifacts_of(client, list(runs))
        for run_id, action in items:
            run = runs.get(run_id)
            if run is None:  # pruned since the plan
                outcome.not_selected["already_done"] = outcome.not_selected.get("already_done", 0) + 1
                continue
            try:
                if action == "drop":
                    if not dry_run:
                        for artifact in artifacts[run_id]:
                            client.request("DELETE", f"/artifacts/{artifact.id}")
                        client.delete_flow_run(uuid.UUID(run_id))
                    pruned += 1
                    outcome.succeeded.append(run_id)
                    continue
                if have.get(record_key(run_id)) is None:
                    operation = flow_operations.get(str(run.flow_id), "unknown")
                    if not dry_run:
                        write_record(store, record_of(run, operation, artifacts[run_id]))
                    archived += 1
                if action == "prune":
                    if not dry_run:
                        record = read_record(store, run_id)
                        if record is None:
                            raise OSError(f"its record {record_key(run_id)} cannot be read back")
                        started = run.expected_start_time or run.start_time or run.created
                        write_index(store, record, started.timestamp())  # the operation list goes on past Prefect
                        for artifact in artifacts[run_id]:
                            client.request("DELETE", f"/artifacts/{artifact.id}")
                        client.delete_flow_run(uuid.UUID(run_id))
                    pruned += 1
            except Exception as exc:  # noqa: BLE001 - this run stays in Prefect: the next cleanup tries again
                outcome.errors.append(ItemError(run_id, "storage_error" if isinstance(exc, OSError) else "batch_error",
                                                f"not archived or pruned: {type(exc).__name__}: {exc}"[:500]))
                continue
            outcome.succeeded.append(run_id)
    outcome.extra["cleanup"] = {"runs_archived": archived, "runs_pruned": pruned}
    return outcome


# ----------------------------------------------------------------------------- runs of the old form

_OLD_PROGRESS = re.compile(r"^(\d+)/(\d+) ")
_OLD_ETA = re.compile(r"ETA (\d+)s")


def _old_result(artifacts: list) -> dict[str, Any] | None:
    """The document of a run that kept it only inside its markdown summary, as a
    fenced JSON block (runs before the ``bulkops-result`` artifact)."""
    for artifact in artifacts:
        if artifact.description == RESULT_ARTIFACT_DESCRIPTION and isinstance(artifact.data, str):
            start, end = artifact.data.rfind("```json\n"), artifact.data.rfind("\n```")
            if 0 <= start < end:
                return json.loads(artifact.data[start + len("```json\n"):end])
    return None


def _old_progress(artifact) -> dict[str, Any] | None:
    """The counts of a progress artifact that kept them only in its description
    (``"12/40 videos · 1/4 batches · ETA 3s"``)."""
    match = _OLD_PROGRESS.match(artifact.description or "")
    if match is None:
        return None
    eta = _OLD_ETA.search(artifact.description or "")
    return {"current": int(match.group(1)), "total": int(match.group(2)),
            "eta_seconds": float(eta.group(1)) if eta else None}
