"""An operation's result document on its flow run: stored as structure, rendered as text.

- ``bulkops-result``: an artifact whose ``data`` is the result document (JSON), what
  ``service/status`` (and so ``bulkops status`` and the API) reads back for any final
  state (a Failed state carries no readable result). The Prefect UI shows it as JSON.
- a markdown artifact for people, drawn from the document: summary, counts, paths;
- a table artifact of the failed items (the first ``ARTIFACT_ERROR_ROWS``);
- the final state: Completed, Completed named ``Partial``, Failed or Cancelled.
"""

from __future__ import annotations

import uuid
from typing import Any

from prefect import get_client
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.schemas.actions import ArtifactCreate
from prefect.states import Cancelled, Completed, Failed, State

from tasks.history import RESULT_ARTIFACT_DESCRIPTION, RESULT_ARTIFACT_TYPE
from videolib.operation import DOCUMENT_ERROR_ROWS, describe_not_selected

ARTIFACT_ERROR_ROWS = 1000  # rows of the errors table artifact (the UI renders it)
# Errors kept in the result document (the one the run returns, prints and stores, which
# `bulkops status` and the API read back). Enough for every error of a request listing ids
# (BULKOPS_MAX_IDS, 10,000 by default), so that failed == len(errors) holds there too,
# even for a dry run (which writes no report); past it (whole-library runs, manifests)
# the report in storage has them all.
RESULT_ERROR_ROWS = DOCUMENT_ERROR_ROWS


def stored_document(document: dict[str, Any]) -> dict[str, Any]:
    """The document as it is stored: at most ``RESULT_ERROR_ROWS`` errors."""
    if len(document["errors"]) <= RESULT_ERROR_ROWS:
        return document
    return {**document, "errors": document["errors"][:RESULT_ERROR_ROWS], "errors_truncated": True}


def publish(document: dict[str, Any]) -> None:
    """The run's result artifacts: the document, the errors table, the summary."""
    if document["errors"]:
        failed = document["failed"]
        create_table_artifact(
            table=document["errors"][:ARTIFACT_ERROR_ROWS],
            description=(
                f"{failed} failed items"
                + (f" (first {ARTIFACT_ERROR_ROWS})" if failed > ARTIFACT_ERROR_ROWS else "")
                + (f"; all of them in {document['report_path']}" if document["report_path"] else "")
            ),
        )
    create_markdown_artifact(markdown=result_markdown(document), description=f"{document['operation']} summary")
    with get_client(sync_client=True) as client:
        client.create_artifact(ArtifactCreate(
            type=RESULT_ARTIFACT_TYPE, data=stored_document(document), description=RESULT_ARTIFACT_DESCRIPTION,
            flow_run_id=uuid.UUID(document["operation_id"])))


def final_state(document: dict[str, Any]) -> State:
    summary = summary_line(document)
    status = document["status"]
    if status == "completed":
        return Completed(message=summary, data=document)
    if status == "partial":
        return Completed(name="Partial", message=summary, data=document)
    if status == "cancelled":
        # A Cancelled state's data must be an exception; the document is in the artifact.
        return Cancelled(message=summary)
    return Failed(message=summary)


def summary_line(document: dict[str, Any]) -> str:
    verb = {"delete": "deleted", "export": "exported", "reprocess": "reprocessed"}.get(document["operation"], "done")
    if document.get("dry_run"):
        verb = f"would be {verb}"
    text = (
        f"{document['operation']} {document['status']}: {document['succeeded']}/{document['requested']} {verb}, "
        f"{document['failed']} failed, {document['skipped']} skipped"
    )
    if document.get("message"):
        text += f" — {document['message']}"
    return text


def result_markdown(document: dict[str, Any]) -> str:
    """The result as a person reads it in the Prefect UI (the JSON is its own artifact)."""
    lines = [
        f"# {document['operation']}: {document['status']}",
        "",
        summary_line(document),
        "",
        "| requested | succeeded | failed | skipped | duration |",
        "|---:|---:|---:|---:|---:|",
        f"| {document['requested']} | {document['succeeded']} | {document['failed']} | "
        f"{document['skipped']} | {document['duration_s']:.1f} s |",
        "",
    ]
    if document.get("not_selected") and any(document["not_selected"].values()):
        lines += [f"Not selected (left out on purpose, not failures): {describe_not_selected(document['not_selected'])}.",
                  ""]
    if document.get("plan"):
        plan = document["plan"]
        lines += [f"Dry run plan: {plan.get('videos', 0)} videos, {plan.get('objects', 0)} objects, "
                  f"{plan.get('bytes', 0)} bytes.", ""]
    output = document.get("output")
    if output:
        lines += [f"Export: `{output['path']}` ({output['rows']} rows, {output['bytes']:,} bytes, {output['format']}); "
                  f"download link valid until {output['expires_at']}.", ""]
    if document.get("report_path"):
        lines += [f"Per-item report: `{document['report_path']}`", ""]
    if document.get("manifest_path"):
        lines += [f"Audit manifest: `{document['manifest_path']}`", ""]
    return "\n".join(lines)
