"""``bulkops status OPERATION_ID [--watch]``: an operation's status document, read from
its Prefect flow run (``service.status``); ``bulkops cancel OPERATION_ID``: stop it from
any terminal (``service.control``)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from cli.app import JsonOpt, emit, err
from cli.render import print_operations, print_status


def status(
    operation_id: Annotated[str, typer.Argument(help="The operation id (its flow run id).")],
    watch: Annotated[bool, typer.Option("--watch", help="Follow the operation until it ends.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show an operation's status, progress and result (from its Prefect flow run)."""
    from service.environment import hold_temporary_server

    hold_temporary_server()
    from service.status import FINAL, read_status, status_of

    document = status_of(operation_id)
    while watch and document["status"] not in FINAL:
        if not json_out:
            p = document["progress"]
            eta = f", ETA {document['eta_seconds']:.0f}s" if document["eta_seconds"] is not None else ""
            err.print(f"{document['status']}: {p['current']}/{p['total']} ({p['percent']:.0f}%){eta}")
        time.sleep(1.0)
        document = read_status(operation_id) or document
    if json_out:
        emit(document)
    else:
        print_status(document)


def cancel(
    operation_id: Annotated[str, typer.Argument(help="The operation id (its flow run id).")],
    json_out: JsonOpt = False,
) -> None:
    """Stop a running operation softly, from any terminal (its result is still written)."""
    from service.environment import hold_temporary_server

    hold_temporary_server()
    from service.control import cancel as request_cancel

    answer = request_cancel(operation_id)
    if json_out:
        emit(answer)
    elif answer["cancel_requested"]:
        err.print(f"Cancel requested for {answer['operation_id']} ({answer['status']}). It stops within about "
                  f"20 s; follow it with: bulkops status {answer['operation_id']} --watch", markup=False)
    else:
        err.print(f"{answer['operation_id']} had already ended ({answer['status']}): nothing to cancel.",
                  markup=False)


def list_operations(
    creator: Annotated[str | None, typer.Option("--creator", help="Only this creator's operations.")] = None,
    status_filter: Annotated[str | None, typer.Option("--status", help=(
        "pending, in_progress, completed, partial, failed or cancelled."))] = None,
    operation: Annotated[str | None, typer.Option("--operation", help="delete, export or reprocess.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many (1-100).")] = 20,
    cursor: Annotated[str | None, typer.Option("--cursor", help="Go on from an earlier page's cursor.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List operations, newest first (from Prefect's flow runs)."""
    from service.requests import check_creator_id

    if creator is not None:
        check_creator_id(creator)
    from service.environment import hold_temporary_server

    hold_temporary_server()
    from service.listing import list_operations as listing

    page = listing(creator_id=creator, status=status_filter, operation=operation, limit=limit, cursor=cursor)
    if json_out:
        emit(page)
    else:
        print_operations(page)
