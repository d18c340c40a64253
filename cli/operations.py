"""``bulkops delete``, ``export`` and ``reprocess``: each parses its flags into one typed
request (``service.requests``), runs it (``service.launch``) with a progress bar on
stderr, and prints the result document (``--json``) or a summary.

Exit status: 0 completed (or a dry run finished), 1 partial, failed or cancelled, 2 refused (``cli.main``).

The operation id goes to stderr as soon as the run exists (also under ``--json``), so
that another terminal can watch it (``bulkops status ID``) or stop it (``bulkops cancel
ID``). Ctrl-C (or SIGTERM) stops the run softly: no new batch, the ones in flight
finish or roll back, and the result document is printed as usual (exit 1). A second
Ctrl-C leaves at once: the run is marked Cancelled, and what it held is freed by the
takeover rule (``videolib/takeover.py``); exit 130.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from cli.app import EmbedderOpt, IdsFileOpt, IdsOpt, JsonOpt, NoWaitOpt, SplitOpt, VerboseOpt, emit, err
from cli.render import BatchWarnings, OperationBar, print_result

_announced = False
LEFT_AT_ONCE = 130  # exit status after a second Ctrl-C (128 + SIGINT)


def run_operation(request, *, json_out: bool, parameters: dict[str, Any] | None = None,
                  verbose: bool = False) -> dict[str, Any]:
    """Run a checked request in this process, with a live progress bar on stderr; its
    result document. Per-batch warnings are counted on the bar and summarised after it
    (shown as they come with ``verbose``)."""
    from service.environment import hold_temporary_server, ui_url
    from service.launch import run

    global _announced
    temporary = hold_temporary_server() is not None  # dies with this process, whatever ends it
    if not json_out and not _announced:
        _announced = True
        where = os.environ.get("PREFECT_API_URL") or "a temporary local Prefect server (set PREFECT_API_URL to reuse one)"
        err.print(f"[dim]Running on {where}…[/dim]")
    ui = None if temporary else ui_url()
    started: dict[str, str] = {}

    with OperationBar(enabled=not json_out, label=request.label) as bar:
        warnings = BatchWarnings(verbose=verbose, on_count=bar.count_warnings)

        def listen(event) -> None:
            if event.phase == "created":
                started["id"] = event.operation_id
                warnings.attach()  # Prefect's console handler exists once the run started
                bar.note(announcement(event.operation_id, ui))
            else:
                bar.update(event)

        try:
            return run(request, listener=listen, parameters=parameters)
        except (KeyboardInterrupt, _termination()) as exc:
            if "id" not in started:
                raise typer.Exit(LEFT_AT_ONCE) from exc
            from service.control import mark_cancelled

            mark_cancelled(started["id"], "left at once (a second Ctrl-C or SIGTERM in the CLI that ran it)")
            bar.note(f"Left at once: operation {started['id']} is marked cancelled; what it had claimed is free "
                     "for the next run. `bulkops status` shows how far it got.")
            raise typer.Exit(LEFT_AT_ONCE) from exc
        finally:
            warnings.detach()
            if warnings.summary():
                bar.note(warnings.summary())


def announcement(operation_id: str, ui: str | None) -> str:
    line = f"Operation {operation_id} started"
    if ui:
        line += f" · {ui}/runs/flow-run/{operation_id}"
    return line + f"\n  watch: bulkops status {operation_id} --watch · stop: bulkops cancel {operation_id} (or Ctrl-C)"


def _termination() -> type[BaseException]:
    from prefect.exceptions import TerminationSignal

    return TerminationSignal


def submit_operation(request, *, json_out: bool) -> None:
    """``--no-wait``: create the run for a worker or runner and leave at once (exit 0)."""
    from service.environment import ui_url
    from service.launch import submit

    answer = submit(request)
    err.print(announcement(answer["operation_id"], ui_url()).replace(" started", " created (pending)"),
              markup=False, highlight=False, soft_wrap=True)
    if json_out:
        emit(answer)
    raise typer.Exit(0)


def launch(request, *, no_wait: bool, verbose: bool, json_out: bool) -> None:
    """Run the request and wait (the bar, then the result): on the `bulkops serve` of
    this machine when one serves this library (warm, ``service/inline.py``), else here;
    or hand it to a worker (``--no-wait``). An ``--ids-file`` over BULKOPS_MAX_IDS is
    uploaded as an id manifest first."""
    from service.launch import upload_manifest_file
    request = upload_manifest_file(request)
    if no_wait:
        submit_operation(request, json_out=json_out)
    # --verbose shows the batches' lines, only a run here has; a retry reads Prefect here anyway.
    handed = not verbose and getattr(request, "retry_of", None) is None
    document = run_on_serve(request, json_out=json_out) if handed else None
    if document is None:
        document = run_operation(request, json_out=json_out, verbose=verbose)
    finish(document, json_out=json_out)


def run_on_serve(request, *, json_out: bool) -> dict[str, Any] | None:
    """Have the running `bulkops serve` execute the request, following it over its API
    with the same bar, announcement, Ctrl-C and result as a run here; None when there is
    no such serve (or it does not answer): the caller runs it itself."""
    from types import SimpleNamespace

    from service.remote import Remote, Unreachable, serve_for_cli

    served = serve_for_cli()
    if served is None:
        return None
    remote = Remote(served)
    try:
        try:
            operation_id = remote.start(request)
        except Unreachable:
            return None
        if not json_out:
            err.print(f"[dim]Running on bulkops serve ({served['local_api_url']}, Prefect "
                      f"{served.get('prefect_api_url')})…[/dim]")
        with OperationBar(enabled=not json_out, label=request.label) as bar:
            bar.note(announcement(operation_id, served.get("ui_url")))

            def show(document: dict[str, Any]) -> None:
                progress = document["progress"]
                bar.update(SimpleNamespace(result=None, current=progress["current"], total=progress["total"] or None,
                                           eta_seconds=document.get("eta_seconds"), batches_done=None, batches=None))

            stopping = False
            while True:
                try:
                    return remote.follow(operation_id, show)["result"]
                except KeyboardInterrupt as exc:
                    if stopping:
                        bar.note(f"Left at once: operation {operation_id} is being cancelled by bulkops serve; "
                                 f"`bulkops status {operation_id}` shows how far it got.")
                        raise typer.Exit(LEFT_AT_ONCE) from exc
                    stopping = True
                    remote.cancel(operation_id)
                    bar.note("Stopping: no new batch starts; the ones in flight finish or roll back "
                             "(Ctrl-C again to leave at once).")
    finally:
        remote.close()


def finish(document: dict[str, Any], *, json_out: bool) -> None:
    """Print the document (or its summary) and leave with the operation's exit status."""
    if json_out:
        emit(document)
    else:
        print_result(document)
    status = document.get("status")
    # A refused or broken run is "failed" with a message; a dry run that finished exits 0
    # whatever its per-item findings (CONTRACT.md).
    aborted = status == "failed" and bool(document.get("message"))
    ok = status == "completed" or (bool(document.get("dry_run")) and status in {"partial", "failed"} and not aborted)
    raise typer.Exit(0 if ok else 1)


def delete(
    creator: Annotated[str, typer.Option("--creator", help="Creator whose videos are deleted.")],
    ids: IdsOpt = None,
    ids_file: IdsFileOpt = None,
    all_videos: Annotated[bool, typer.Option("--all", help="Every video of the creator.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be deleted; change nothing.")] = False,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, max=100_000, help="Videos per batch \\[default: BULKOPS_BATCH_SIZE, 1000]."
    )] = None,
    split: SplitOpt = None,
    no_wait: NoWaitOpt = False,
    verbose: VerboseOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Delete videos: rows, files, thumbnails and transcript chunks (tombstone first)."""
    from service.requests import CommandLineIds, DeleteRequest

    request = DeleteRequest.build(creator_id=creator, selection=CommandLineIds(ids or (), ids_file or (), all_videos),
                                  dry_run=dry_run, batch_size=batch_size, split=split)
    launch(request, no_wait=no_wait, verbose=verbose, json_out=json_out)


def export(
    creator: Annotated[str, typer.Option("--creator", help="Creator whose videos are exported.")],
    fmt: Annotated[str, typer.Option("--format", help="parquet or csv.")],
    ids: IdsOpt = None,
    ids_file: IdsFileOpt = None,
    columns: Annotated[str | None, typer.Option("--columns", help="Comma-separated subset of columns.")] = None,
    status_filter: Annotated[str | None, typer.Option("--status", help="Only videos with this status.")] = None,
    created_after: Annotated[str | None, typer.Option("--created-after", help="ISO 8601 time (inclusive).")] = None,
    created_before: Annotated[str | None, typer.Option("--created-before", help="ISO 8601 time (exclusive).")] = None,
    no_formula_guard: Annotated[
        bool, typer.Option("--no-formula-guard", help="CSV: keep cells starting with = + - @ as they are.")
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=100, max=1_000_000, help="Rows per task.")] = 20_000,
    split: SplitOpt = None,
    no_wait: NoWaitOpt = False,
    verbose: VerboseOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Export video metadata to one Parquet or CSV file in storage, with an expiring download link."""
    from service.requests import CommandLineIds, ExportRequest

    request = ExportRequest.build(
        creator_id=creator, selection=CommandLineIds(ids or (), ids_file or (), allow_all=False), format=fmt,
        columns=columns, status=status_filter, created_after=created_after, created_before=created_before,
        formula_guard=not no_formula_guard, batch_size=batch_size, split=split,
    )
    launch(request, no_wait=no_wait, verbose=verbose, json_out=json_out)


def reprocess(
    creator: Annotated[str, typer.Option("--creator", help="Creator whose videos are reprocessed.")],
    ids: IdsOpt = None,
    ids_file: IdsFileOpt = None,
    all_videos: Annotated[bool, typer.Option("--all", help=(
        "Every video of the creator that has a transcript and that nobody else is processing; "
        "the others are counted as not selected, not as failures."))] = False,
    embedder: EmbedderOpt = None,
    chunk_target: Annotated[int, typer.Option("--chunk-target", help="Most words (or tokens) per chunk.")] = 80,
    chunk_overlap: Annotated[int, typer.Option("--chunk-overlap", help="Words (or tokens) of overlap.")] = 16,
    chunk_unit: Annotated[str, typer.Option("--chunk-unit", help="words or tokens.")] = "words",
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, max=100_000, help="Videos per batch \\[default: 1000 with hashing, 100 with minilm]."
    )] = None,
    split: SplitOpt = None,
    no_wait: NoWaitOpt = False,
    verbose: VerboseOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Re-chunk transcripts and recompute embeddings (a video gets all new chunks or keeps its old ones)."""
    from service.requests import CommandLineIds, ReprocessRequest

    request = ReprocessRequest.build(
        creator_id=creator, selection=CommandLineIds(ids or (), ids_file or (), all_videos), embedder=embedder,
        batch_size=batch_size, chunk_target=chunk_target, chunk_overlap=chunk_overlap, chunk_unit=chunk_unit,
        split=split,
    )
    launch(request, no_wait=no_wait, verbose=verbose, json_out=json_out)


def retry(
    operation_id: Annotated[str, typer.Argument(help="A finished delete or reprocess.")],
    no_wait: NoWaitOpt = False,
    verbose: VerboseOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Take again exactly the retryable failed items of a finished delete or reprocess."""
    from service.environment import hold_temporary_server

    hold_temporary_server()
    from service.control import retry_request

    launch(retry_request(operation_id), no_wait=no_wait, verbose=verbose, json_out=json_out)


def cleanup(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be done (counts, bytes); change nothing.")] = False,
    no_wait: NoWaitOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove what crashed, expired or forgotten work left (the daily cleanup, now); one at a time."""
    from service.requests import CleanupRequest

    launch(CleanupRequest.build(dry_run=dry_run), no_wait=no_wait, verbose=False, json_out=json_out)


def restore(
    creator: Annotated[str, typer.Option("--creator", help="Creator whose trashed videos are restored.")],
    ids: IdsOpt = None,
    ids_file: IdsFileOpt = None,
    operation: Annotated[str | None, typer.Option(
        "--operation", help="A delete's operation id: restore every video it trashed that is still in the trash.",
    )] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be restored; change nothing.")] = False,
    no_wait: NoWaitOpt = False,
    verbose: VerboseOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Bring back videos a delete trashed, exactly as they were, while its undo window (BULKOPS_DELETE_GRACE) is open."""
    from service.requests import CommandLineIds, RestoreRequest

    request = RestoreRequest.build(creator_id=creator, selection=CommandLineIds(ids or (), ids_file or (), allow_all=False),
                                   delete_operation=operation, dry_run=dry_run)
    launch(request, no_wait=no_wait, verbose=verbose, json_out=json_out)
