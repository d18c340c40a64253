"""The library itself: ``bulkops init``, ``seed``, ``search`` and ``demo``.

``--help``, ``init`` and ``seed`` never import prefect: it costs over a second before
anything happens.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from cli.app import EmbedderOpt, JsonOpt, emit, out
from cli.render import counting_bar, print_result, print_search


def init(json_out: JsonOpt = False) -> None:
    """Create or upgrade the database schema (Alembic)."""
    from service.library import init_schema

    document = init_schema()
    if json_out:
        emit(document)
        return
    before, after = document["before"], document["revision"]
    what = "created" if before is None else ("upgraded" if before != after else "already up to date")
    out.print(f"Schema {what} at revision {after} in {document['database']}")


def seed(
    videos: Annotated[int, typer.Option(min=0, max=10_000_000, help="How many videos to create.")] = 100,
    creators: Annotated[int, typer.Option(min=1, max=10_000, help="How many creators own them.")] = 3,
    seed_value: Annotated[
        int | None, typer.Option("--seed", help="Random seed (same seed, same library). Default: random.")
    ] = None,
    no_files: Annotated[bool, typer.Option("--no-files", help="Rows only: no files in storage.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Generate a demo library: rows, real files and thumbnails, transcript chunks."""
    from service.library import seed as seed_library

    started = time.monotonic()
    with counting_bar(not json_out and videos >= 1000, "seeding", videos) as advance:
        report, used = seed_library(videos=videos, creators=creators, seed_value=seed_value, files=not no_files,
                                    on_progress=advance)
    if json_out:
        emit(report.to_dict())
        return
    out.print(
        f"Seeded {report.videos} videos ({report.chunks} chunks, {report.objects} objects) "
        f"for {len(report.creators)} creators with seed {used} in {time.monotonic() - started:.1f}s"
    )
    for creator, count in report.creators.items():
        out.print(f"  {creator}: {count} videos")


def search(
    query: Annotated[str, typer.Argument(help="What to look for in the transcripts.")],
    creator: Annotated[str, typer.Option("--creator", help="Creator whose chunks are searched.")],
    top: Annotated[int, typer.Option("--top", help="How many chunks to show (1-100).")] = 10,
    embedder: EmbedderOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The transcript chunks most similar to a query (cosine similarity of embeddings)."""
    from service.library import search as search_library
    from service.requests import SearchRequest

    document = search_library(SearchRequest.build(creator_id=creator, query=query, top=top, embedder=embedder))
    if json_out:
        emit(document)
    else:
        print_search(document, query)


def demo(
    videos: Annotated[int, typer.Option(min=10, max=100_000, help="Videos in the demo library.")] = 2000,
) -> None:
    """Seed a demo library and run the bulk operations on it, with summaries."""
    from cli.operations import run_operation
    from service.library import demo as plan_demo
    from service.library import search as search_library
    from service.requests import SearchRequest

    out.rule("1. seed")
    plan = plan_demo(videos=videos)
    report = plan.report
    out.print(f"Seeded {report.videos} videos, {report.chunks} chunks, {report.objects} objects "
              f"in {plan.database} and {plan.store.url}")
    document: dict = {}
    for title, request in plan.steps:
        out.rule(title)
        document = run_operation(request, json_out=False)
        print_result(document)
        if document.get("status") != "completed":
            out.print(f"[red]{title} ended {document.get('status')}[/red]")
            raise typer.Exit(1)
        if document.get("output"):
            path = document["output"]["path"]
            out.print(f"File: {path if plan.store.is_s3 else Path(plan.store.root) / path}")
        if request.flow_name == plan.search_after:
            out.rule(f"3. search: {plan.query!r}")
            found = search_library(SearchRequest.build(creator_id=plan.creator, query=plan.query, top=3))
            for rank, hit in enumerate(found["results"], 1):
                text = hit["content"] if len(hit["content"]) <= 160 else hit["content"][:157] + "..."
                out.print(f"{rank}. {hit['score']:.3f}  {hit['title']!r}, chunk {hit['chunk_index']}: {text}",
                          markup=False)
            out.print(f"(searched {found['searched_chunks']} chunks embedded with {found['model']}; "
                      f"try: bulkops search --creator {plan.creator} \"your words\")", markup=False)
    out.print(f"\nDone. Check a run: bulkops status {document['operation_id']}")
    out.print("The download links work while the API runs: BULKOPS_JWT_SECRET=$(openssl rand -hex 32) "
              ".venv/bin/bulkops serve", markup=False)
