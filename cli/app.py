"""The ``bulkops`` Typer app, its two consoles and the options its commands share.

stdout carries what a command answers (one JSON document under ``--json``); progress,
logs and errors go to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(
    name="bulkops",
    help="Bulk delete, export and reprocess for a video library, run as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
# Repeatable: `--ids A --ids B,C` selects all three (a repeated option must never drop ids).
IdsOpt = Annotated[list[str] | None, typer.Option("--ids", help="Comma-separated video ids (repeatable).")]
IdsFileOpt = Annotated[
    list[Path] | None, typer.Option("--ids-file", help="File with one video id per line (repeatable).")
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show each batch's warnings on stderr as they come.")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help=(
    "Create the run and return at once (exit 0); a worker or runner on the Prefect server named by "
    "PREFECT_API_URL executes it. Follow it with `bulkops status ID --watch`."))]
SplitOpt = Annotated[int | None, typer.Option("--split", min=1, max=16, help=(
    "Run the batches as N child runs on the work pool's workers, each taking its share "
    "\\[default: BULKOPS_SPLIT, 1]."))]
EmbedderOpt = Annotated[
    str | None,
    typer.Option("--embedder", help="hashing (built in, lexical) or minilm (extra); default BULKOPS_EMBEDDER."),
]


def emit(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
    sys.stdout.flush()
