"""``bulkops status OPERATION_ID [--watch]``: an operation's status document, read from
its Prefect flow run (``service.status``)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from cli.app import JsonOpt, emit, err
from cli.render import print_status


def status(
    operation_id: Annotated[str, typer.Argument(help="The operation id (its flow run id).")],
    watch: Annotated[bool, typer.Option("--watch", help="Follow the operation until it ends.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show an operation's status, progress and result (from its Prefect flow run)."""
    from service.environment import prefect_defaults

    prefect_defaults()
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
