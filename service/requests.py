"""Typed requests: one per operation, built from CLI flags, an API body or a deployment
form alike, and every rule a request must pass before anything runs.

A rule is a function of the domain (``videolib``) that raises :class:`RequestError`
with its contract code (``../shared/CONTRACT.md``); the requests here apply them in one
order (creator, options, selection, embedder), so every front door refuses the same
things with the same codes, and a flow run from a deployment form applies the same
functions to its parameters. What only a command line has (``--ids``/``--ids-file``/
``--all`` flags and files of ids) is read here too (:class:`CommandLineIds`).

``DeleteRequest.build(...)`` gives a checked request; ``flow_parameters()`` is what its
flow run takes. The checks that need the database or the storage run when the request
is launched (``service.launch``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine

from config import get_settings
from videolib.chunking import chunking_config
from videolib.embedders import check_embedder
# videolib.export (pyarrow) loads when an export is asked for: a delete or a reprocess
# from the command line does not pay for it (``_export``).
from videolib.ids import RequestError, check_creator_id
from videolib.manifests import check_manifest_key, inspect_manifest, upload_manifest
from videolib.operation import describe_not_selected, parse_video_ids
from videolib.reprocess import any_reprocessable, select_reprocessable
from videolib.search import check_query


def _export():
    import videolib.export as export

    return export
from videolib.selection import check_selection, count_creator_videos

__all__ = ["CommandLineIds", "DeleteRequest", "ExportRequest", "OperationRequest", "ReprocessRequest",
           "RequestError", "RestoreRequest", "SearchRequest"]


@dataclass(frozen=True)
class CommandLineIds:
    """A command line's selection as typed: ``--ids`` values (comma-separated,
    repeatable), ``--ids-file`` files (one id per line, blank lines ignored) and ``--all``;
    exactly one of them (``--all`` where offered), else ``bad_selection``."""

    ids: Sequence[str] = ()
    ids_files: Sequence[Path] = ()
    all_videos: bool = False
    allow_all: bool = True

    def given(self) -> bool:
        return bool(self.ids or self.ids_files or self.all_videos)

    def oversize_file(self, max_ids: int) -> Path | None:
        """The one ``--ids-file`` given alone when it lists more than ``max_ids`` ids: it
        goes to storage as an id manifest instead (counted as a stream, never read whole)."""
        if self.ids or self.all_videos or len(self.ids_files) != 1:
            if len(self.ids_files) > 1 and sum(_count_ids(p) for p in self.ids_files) > max_ids:
                raise RequestError("too_many_ids", f"over {max_ids} ids in several --ids-file files: give them as one "
                                                   f"file (it is then uploaded as an id manifest)")
            return None
        path = Path(self.ids_files[0])
        return path if _count_ids(path) > max_ids else None

    def read(self) -> list[str] | None:
        """The listed ids as given (None for ``--all``)."""
        given = [name for name, value in (("--ids", bool(self.ids)), ("--ids-file", bool(self.ids_files)),
                                          ("--all", self.all_videos)) if value]
        options = "--ids, --ids-file or --all" if self.allow_all else "--ids or --ids-file"
        if len(given) != 1:
            if not given:
                raise RequestError("bad_selection", f"select videos with exactly one of {options}")
            raise RequestError("bad_selection", f"{' and '.join(given)} given: use exactly one of {options}")
        if self.all_videos:
            return None
        items: list[str] = []
        for value in self.ids:
            items.extend(part.strip() for part in value.split(","))
        for path in self.ids_files:
            items.extend(line.strip() for line in _read_ids_file(path).splitlines())
        return [item for item in items if item]


def _count_ids(path: Path) -> int:
    """Non-blank lines of an ids file, read as a stream."""
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return 0  # reading it says what is wrong (_read_ids_file)


def _read_ids_file(path: Path) -> str:
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first id.
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise RequestError("ids_file_not_found", f"--ids-file {str(path)!r} does not exist") from exc
    except IsADirectoryError as exc:
        raise RequestError("ids_file_unreadable", f"--ids-file {str(path)!r} is a directory") from exc
    except UnicodeDecodeError as exc:
        raise RequestError("ids_file_unreadable", f"--ids-file {str(path)!r} is not UTF-8 text") from exc
    except OSError as exc:
        raise RequestError("ids_file_unreadable", f"cannot read --ids-file {str(path)!r}: {exc.strerror}") from exc


class OperationRequest(BaseModel):
    """What every bulk operation is asked: whose videos, and which."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    operation: ClassVar[str]
    flow_name: ClassVar[str]

    creator_id: str
    # The ids as given (any text: a malformed id is a per-item error, never a refusal);
    # None with all_videos, or, for an export, to mean all of the creator's videos.
    video_ids: list[str] | None = None
    all_videos: bool = False
    # Or an id manifest in storage (manifests/{creator_id}/..., videolib/manifests.py), or
    # a command line's --ids-file over BULKOPS_MAX_IDS that becomes one when launched.
    manifest: str | None = None
    manifest_file: str | None = Field(None, exclude=True)
    takes_manifest: ClassVar[bool] = True

    @classmethod
    def build(cls, *, creator_id: str, selection: CommandLineIds | None = None, **options: Any):
        """A checked request: the creator, then the options, then the selection (a command
        line's, read now; or ``video_ids``/``all_videos`` given in ``options``)."""
        check_creator_id(creator_id)
        request = cls(creator_id=creator_id, **options)
        request.check_options()
        big = selection.oversize_file(get_settings().max_ids) if selection is not None and cls.takes_manifest else None
        if big is not None:
            request = request.model_copy(update={"manifest_file": str(big)})
        elif selection is not None and (selection.given() or not request.selection_optional):
            ids = selection.read()
            request = request.model_copy(update={"video_ids": ids, "all_videos": ids is None})
        request.check_selection()
        request.check_resources()
        return request

    selection_optional: ClassVar[bool] = False  # an export without ids exports everything

    def check_options(self) -> None:
        """The operation's own options (format, chunking, ...)."""

    def check_selection(self) -> None:
        if self.manifest is not None or self.manifest_file is not None:
            self.check_manifest()
            return
        if getattr(self, "retry_of", None) is not None:
            if self.video_ids is not None or self.all_videos:
                raise RequestError("bad_selection", "a retry takes the items of the operation it retries: no ids "
                                                    "or --all with it")
            return
        check_selection(listed=self.video_ids is not None, all_videos=self.all_videos, filtered=self.filtered,
                        everything_by_default=self.selection_optional, verb=self.operation)
        if self.video_ids is not None:
            parse_video_ids(self.video_ids, max_ids=get_settings().max_ids)  # empty, or too many

    def check_manifest(self) -> None:
        """A manifest selects alone: no ids, ``all``, filter or retry with it; its key in
        the creator's own folder (``bad_manifest``)."""
        if not self.takes_manifest:
            raise RequestError("bad_selection", f"{self.operation} takes listed ids, not a manifest")
        if self.video_ids is not None or self.all_videos or getattr(self, "retry_of", None) is not None:
            raise RequestError("bad_selection", "give either a manifest or ids/--all, not both")
        if self.filtered:
            raise RequestError("bad_selection", "a manifest selects its videos itself: no filter with it")
        if self.manifest is not None:
            check_manifest_key(self.creator_id, self.manifest)

    def check_storage(self, store) -> None:
        """A named manifest exists, reads in its format and is not too large (it is read
        once here, to the end: refused before any run, not half-way through one)."""
        if self.manifest is not None:
            inspect_manifest(store, self.creator_id, self.manifest, max_ids=get_settings().max_manifest_ids)

    def upload_manifest_file(self, store) -> OperationRequest:
        """The request with its oversize ``--ids-file`` uploaded as a manifest (by content:
        ``manifests/{creator_id}/{sha256}.txt``), or itself."""
        if self.manifest_file is None:
            return self
        path = Path(self.manifest_file)
        try:
            with open(path, "rb") as source:
                info = upload_manifest(store, self.creator_id, source, max_ids=get_settings().max_manifest_ids)
        except OSError:
            _read_ids_file(path)  # says what is wrong with it
            raise
        return self.model_copy(update={"manifest": info.key, "manifest_file": None})

    @property
    def filtered(self) -> bool:
        return False

    def check_resources(self) -> None:
        """What the operation needs in this process (an embedder)."""

    def check_library(self, engine: Engine) -> None:
        """Refuse a whole-library selection that selects nothing (``empty_selection``)."""
        if self.all_videos and count_creator_videos(engine, self.creator_id) == 0:
            raise RequestError("empty_selection",
                               f"creator {self.creator_id!r} has no videos: nothing to select with --all")

    @property
    def label(self) -> str:
        return self.operation

    def flow_parameters(self) -> dict[str, Any]:
        return self._dump()

    def _dump(self) -> dict[str, Any]:
        data = self.model_dump()
        for name in ("retry_of", "split", "manifest"):  # (a deployment made before they existed takes the rest)
            if data.get(name) is None:
                data.pop(name, None)
        return data


class DeleteRequest(OperationRequest):
    operation: ClassVar[str] = "delete"
    flow_name: ClassVar[str] = "bulk-delete"

    dry_run: bool = False
    batch_size: int | None = Field(None, ge=1, le=100_000)
    retry_of: str | None = None  # an earlier delete whose retryable failures this one takes again
    split: int | None = Field(None, ge=1, le=16)

    @property
    def label(self) -> str:
        return "delete (dry run)" if self.dry_run else ("delete (retry)" if self.retry_of else "delete")


class ExportRequest(OperationRequest):
    operation: ClassVar[str] = "export"
    flow_name: ClassVar[str] = "bulk-export"
    selection_optional: ClassVar[bool] = True

    format: str
    columns: list[str] | None = None
    status: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    formula_guard: bool = True
    batch_size: int = Field(20_000, ge=100, le=1_000_000)
    split: int | None = Field(None, ge=1, le=16)

    @classmethod
    def build(cls, *, creator_id: str, selection: CommandLineIds | None = None, **options: Any):
        """Also from a command line's text: ``columns`` comma-separated, times ISO 8601."""
        check_creator_id(creator_id)
        _export().check_format(options.get("format"))
        columns = options.get("columns")
        if isinstance(columns, str):
            options["columns"] = [c for c in columns.split(",") if c.strip()] or None
        for name in ("created_after", "created_before"):
            if isinstance(options.get(name), str):
                options[name] = _export().parse_timestamp(options[name], name=name.replace("_", "-"))
        return super().build(creator_id=creator_id, selection=selection, **options)

    def check_options(self) -> None:
        _export().check_format(self.format)
        _export().resolve_columns(self.columns)
        self.export_filter()

    @property
    def filtered(self) -> bool:
        return self.export_filter() != _export().ExportFilter()

    def check_library(self, engine: Engine) -> None:
        if self.video_ids is None and self.manifest is None and self.manifest_file is None:
            with engine.connect() as conn:
                if _export().count_selected(conn, self.creator_id, self.export_filter()) == 0:
                    raise RequestError("empty_selection",
                                       f"no videos of creator {self.creator_id!r} match: nothing to export")

    def export_filter(self):
        return _export().ExportFilter(status=self.status, created_after=self.created_after,
                                      created_before=self.created_before)

    def flow_parameters(self) -> dict[str, Any]:
        flt = self.export_filter()
        return {**self._dump(), "columns": _export().resolve_columns(self.columns),
                "created_after": flt.created_after,
                "created_before": flt.created_before}


class ReprocessRequest(OperationRequest):
    operation: ClassVar[str] = "reprocess"
    flow_name: ClassVar[str] = "bulk-reprocess"

    embedder: str | None = None
    batch_size: int | None = Field(None, ge=1, le=100_000)
    chunk_target: int = 80
    chunk_overlap: int = 16
    chunk_unit: str = "words"
    retry_of: str | None = None  # an earlier reprocess whose retryable failures this one takes again
    split: int | None = Field(None, ge=1, le=16)

    def check_options(self) -> None:
        chunking_config(self.chunk_target, self.chunk_overlap, self.chunk_unit)

    def check_resources(self) -> None:
        check_embedder(self.embedder_name)

    def check_library(self, engine: Engine) -> None:
        """``--all`` selects only what a reprocess can act on: refuse when that is nothing."""
        if not self.all_videos:
            return
        from tasks.resources import HOLDERS

        lease_s = get_settings().reprocess_lease_s
        if any_reprocessable(engine, self.creator_id, lease_s=lease_s, holders=HOLDERS):
            return
        counts = select_reprocessable(engine, self.creator_id, operation_id="", lease_s=lease_s,
                                      holders=HOLDERS).not_selected
        left_out = describe_not_selected(counts)
        if not left_out:
            raise RequestError("empty_selection",
                               f"creator {self.creator_id!r} has no videos: nothing to select with --all")
        raise RequestError("empty_selection", f"creator {self.creator_id!r} has no videos to reprocess: {left_out}")

    @property
    def embedder_name(self) -> str:
        return self.embedder or get_settings().embedder

    def flow_parameters(self) -> dict[str, Any]:
        return {**self._dump(), "embedder": self.embedder_name}


class RestoreRequest(OperationRequest):
    """Bring trashed videos back (the undo window, ``videolib/trash.py``): listed ids, or
    every video one delete trashed (``delete_operation``; ``--operation`` on the command
    line, ``operation`` in an API body)."""

    operation: ClassVar[str] = "restore"
    flow_name: ClassVar[str] = "bulk-restore"
    takes_manifest: ClassVar[bool] = False

    delete_operation: str | None = None
    dry_run: bool = False
    batch_size: int | None = Field(None, ge=1, le=100_000)

    @classmethod
    def build(cls, *, creator_id: str, selection: CommandLineIds | None = None, **options: Any):
        """A command line gives ids, or ``--operation``: its empty selection is not read then."""
        if options.get("delete_operation") is not None and selection is not None:
            if selection.given():
                raise RequestError("bad_selection", "give either --ids/--ids-file or --operation, not both")
            selection = None
        return super().build(creator_id=creator_id, selection=selection, **options)

    def check_selection(self) -> None:
        if self.all_videos:
            raise RequestError("bad_selection", "restore takes listed ids or --operation, not --all")
        if self.delete_operation is not None:
            if self.video_ids is not None:
                raise RequestError("bad_selection", "give either ids or --operation, not both")
            try:
                uuid.UUID(str(self.delete_operation))
            except ValueError:
                raise RequestError("bad_selection", "--operation must be a delete's operation id (a UUID); got "
                                                    f"{str(self.delete_operation)[:40]!r}") from None
            return
        if self.video_ids is None:
            raise RequestError("empty_selection", "nothing to restore: give trashed videos' ids, or a delete's "
                                                  "operation id (--operation; `operation` in an API body)")
        super().check_selection()

    def check_library(self, engine: Engine) -> None:
        """``--operation`` whose window has closed is refused before a run (``window_closed``)."""
        if self.delete_operation is None:
            return
        from tasks.resources import store
        from videolib.records import read_record
        from videolib.trash import restorable_of

        restorable_of(engine, self.creator_id, self.delete_operation, grace_s=get_settings().delete_grace,
                      record=lambda op: read_record(store(), op))

    @property
    def label(self) -> str:
        return "restore (dry run)" if self.dry_run else "restore"

    def flow_parameters(self) -> dict[str, Any]:
        return self.model_dump(exclude={"all_videos"}, exclude_none=True)


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    creator_id: str
    query: str
    top: int = 10
    embedder: str | None = None

    @classmethod
    def build(cls, **fields: Any) -> SearchRequest:
        request = cls(**fields)
        check_creator_id(request.creator_id)
        check_query(request.query, request.top)
        check_embedder(request.embedder_name)
        return request

    @property
    def embedder_name(self) -> str:
        return self.embedder or get_settings().embedder


class CleanupRequest(BaseModel):
    """A cleanup of the whole library (``flows/cleanup.py``): no creator, no selection.
    Refused with ``cleanup_running`` while another has not ended (``service/slots.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    operation: ClassVar[str] = "cleanup"
    flow_name: ClassVar[str] = "cleanup"

    dry_run: bool = False
    batch_size: int | None = Field(None, ge=1, le=100_000)
    creator_id: ClassVar[None] = None
    video_ids: ClassVar[None] = None
    all_videos: ClassVar[bool] = False

    @classmethod
    def build(cls, **options: Any) -> CleanupRequest:
        return cls(**options)

    def check_library(self, engine: Engine) -> None:
        """The schema is current (the steps read and write the videos table)."""

    def check_storage(self, store) -> None:
        """Nothing to read before a cleanup: it finds what is due itself."""

    @property
    def label(self) -> str:
        return "cleanup (dry run)" if self.dry_run else "cleanup"

    def flow_parameters(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)
