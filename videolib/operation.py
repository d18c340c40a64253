"""What every bulk operation shares, without any orchestrator: the request's id list,
batch planning, per-item errors, counting and the result document (CONTRACT.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from videolib.ids import RequestError, normalize_video_id

OPERATIONS = ("delete", "export", "reprocess", "cleanup", "restore")

# Errors a result document lists (CONTRACT.md: at most 10,000, ``errors_truncated``
# past that; the CSV report has them all). Also what a run keeps of them in memory: the
# rest go to the report's spool on disk (videolib/report.py), so that a selection of
# millions of foreign ids costs disk, not memory.
DOCUMENT_ERROR_ROWS = 10_000

# Per-item error names. The first four count as failed items (CONTRACT.md).
NOT_FOUND = "not_found"
INVALID_ID = "invalid_id"
UNSAFE_KEY = "unsafe_key"
NO_TRANSCRIPT = "no_transcript"
BAD_VALUE = "bad_value"  # export: a stored value that cannot be written (detail column=<name>)
STORAGE_ERROR = "storage_error"
DATABASE_ERROR = "database_error"
BATCH_ERROR = "batch_error"
NOT_VERIFIED = "not_verified"  # delete: something of the video was read back after its delete


class Ticker(Protocol):
    """What a batch tells its operation while it works: how many of its items are done
    so far (progress inside a batch), and whether it should stop (a cancel: the batch
    then rolls its work back and reports its items ``skipped``)."""

    def done(self, items: int) -> None: ...

    def stopping(self) -> bool: ...


@dataclass(frozen=True, slots=True)  # a run may hold hundreds of thousands
class ItemError:
    video_id: str
    error: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"video_id": self.video_id, "error": self.error, "detail": self.detail}


@dataclass
class BatchOutcome:
    """What one batch did. ``succeeded`` are ids; errors are per item."""

    succeeded: list[str] = field(default_factory=list)
    errors: list[ItemError] = field(default_factory=list)
    skipped: int = 0
    objects: int = 0
    bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # Set when a batch counts its successes without listing them (export rows).
    succeeded_count: int | None = None
    # Items a whole-library selection turned out unable to act on when the batch came to
    # them, by reason: not errors, and no longer part of what was requested.
    not_selected: dict[str, int] = field(default_factory=dict)

    @property
    def n_succeeded(self) -> int:
        return len(self.succeeded) if self.succeeded_count is None else self.succeeded_count

    @property
    def processed(self) -> int:
        return self.n_succeeded + len(self.errors) + self.skipped

    def leave_out(self, reasons: Iterable[str]) -> BatchOutcome:
        """Move the errors with these codes to ``not_selected`` (a whole-library run
        selects only what it can act on: what changed under it is left out, not failed)."""
        reasons = set(reasons)
        kept: list[ItemError] = []
        for error in self.errors:
            if error.error in reasons:
                self.not_selected[error.error] = self.not_selected.get(error.error, 0) + 1
            else:
                kept.append(error)
        self.errors = kept
        return self

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["errors"] = [e.to_dict() for e in self.errors]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchOutcome:
        return cls(
            succeeded=list(data.get("succeeded", [])),
            errors=[ItemError(**e) for e in data.get("errors", [])],
            skipped=int(data.get("skipped", 0)),
            objects=int(data.get("objects", 0)),
            bytes=int(data.get("bytes", 0)),
            extra=dict(data.get("extra", {})),
            succeeded_count=data.get("succeeded_count"),
            not_selected=dict(data.get("not_selected", {})),
        )


ECHO_MAX_CHARS = 64
INVALID_DETAIL = "not a UUID (expected 8-4-4-4-12 hex digits)"


def echo_id(raw: object) -> str:
    """How a rejected id is echoed back: as given, but an id longer than 64 characters
    as its first 64 and ``…`` (a 1 MB line must not come back twice in a document)."""
    shown = raw if isinstance(raw, str) else repr(raw)
    return shown if len(shown) <= ECHO_MAX_CHARS else shown[:ECHO_MAX_CHARS] + "…"


@dataclass
class ParsedIds:
    """A request's id list: distinct valid ids in first-seen order, malformed ones as errors."""

    ids: list[str]
    errors: list[ItemError]

    @property
    def requested(self) -> int:
        return len(self.ids) + len(self.errors)


def parse_video_ids(raw_ids: Sequence[object] | None, *, max_ids: int) -> ParsedIds:
    """Validate an inline id list: bounds for the whole list, then each id.

    The list as a whole is refused (``RequestError``) when it is empty or longer than
    ``max_ids``; single malformed ids become ``invalid_id`` items, echoed as given.
    Duplicates collapse (after normalisation) and are not errors.
    """
    if raw_ids is None or len(raw_ids) == 0:
        raise RequestError("empty_selection", "the selection is empty: give at least one video id")
    if len(raw_ids) > max_ids:
        raise RequestError(
            "too_many_ids",
            f"{len(raw_ids)} ids given; one request may list at most {max_ids} "
            "(split the list, or select all of the creator's videos)",
        )
    seen: set[str] = set()
    seen_bad: set[str] = set()
    ids: list[str] = []
    errors: list[ItemError] = []
    for raw in raw_ids:
        vid = normalize_video_id(raw)
        if vid is None:
            key = raw if isinstance(raw, str) else repr(raw)
            if key not in seen_bad:
                seen_bad.add(key)
                errors.append(ItemError(echo_id(raw), INVALID_ID, INVALID_DETAIL))
        elif vid not in seen:
            seen.add(vid)
            ids.append(vid)
    return ParsedIds(ids=ids, errors=errors)


def describe_not_selected(not_selected: dict[str, int] | None) -> str:
    """``"120 without a transcript, 3 busy"``: what a selection left out, for people."""
    words = {"no_transcript": "without a transcript", "busy": "busy (another operation or pipeline holds them)"}
    return ", ".join(f"{n} {words.get(reason, reason)}" for reason, n in (not_selected or {}).items() if n)


def effective_batch_size(total: int, batch_size: int, max_batches: int, *, workers: int = 1) -> int:
    """The batch size that keeps one operation to at most ``max_batches`` task runs.

    With ``workers`` > 1, a job of only a few rounds of batches is cut into the nearest
    multiple of ``workers`` batches (at least one round), so that its last round does
    not run on one or two threads while the others idle: 10k videos on 8 workers make
    8 batches of 1250, not 10 of 1000. Rounding down when that is nearer saves task runs,
    each a fixed cost on the Prefect server (a 200k-row PostgreSQL export: 8 batches
    2.1 s, 16 batches 2.4 s; benchmarks/README.md).
    """
    if batch_size < 1:
        raise ValueError("`batch_size` must be at least 1")
    if max_batches < 1:
        raise ValueError("`max_batches` must be at least 1")
    if not total:
        return batch_size
    size = max(batch_size, math.ceil(total / max_batches))
    count = math.ceil(total / size)
    if workers > 1 and 1 < count < 4 * workers and count % workers:
        rounds = max(1, math.floor(count / workers + 0.5))
        balanced = min(max_batches, rounds * workers, total)
        size = math.ceil(total / balanced)
    return size


def plan_batches(ids: Sequence[str], *, batch_size: int, max_batches: int, workers: int = 1) -> list[list[str]]:
    size = effective_batch_size(len(ids), batch_size, max_batches, workers=workers)
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def decide_status(*, succeeded: int, failed: int, cancelled: bool = False, aborted: bool = False) -> str:
    """``completed | partial | failed | cancelled`` exactly as CONTRACT.md counts them."""
    if aborted:
        return "failed"
    if cancelled:
        return "cancelled"
    if failed == 0:
        return "completed"
    if succeeded == 0:
        return "failed"
    return "partial"


@dataclass
class OperationResult:
    """The result document (CONTRACT.md), built up as batches finish."""

    operation_id: str
    operation: str
    creator_id: str | None  # None: an operation of the whole library (cleanup)
    dry_run: bool = False
    requested: int = 0
    succeeded: int = 0
    skipped: int = 0
    # The first DOCUMENT_ERROR_ROWS per-item errors; every one (``failed`` of them) is
    # in the report's spool. Add them with :meth:`add` or :meth:`add_errors` only.
    errors: list[ItemError] = field(default_factory=list)
    report_path: str | None = None
    output: dict[str, Any] | None = None
    plan: dict[str, int] | None = None
    # What a whole-library selection left out on purpose, by reason (not errors).
    not_selected: dict[str, int] | None = None
    manifest_path: str | None = None
    message: str | None = None
    retry_of: str | None = None  # the operation whose retryable failures this one takes again
    manifest: dict[str, Any] | None = None  # the id manifest the selection came from: key, sha256, lines
    cleanup: dict[str, int] | None = None  # cleanup's counts (videolib/cleanup.py COUNTS)
    verified: dict[str, int] | None = None  # delete, cleanup: what was read back as gone
    trashed: int | None = None  # delete under the undo window: videos moved to the trash
    purge_after: str | None = None  # ... and when cleanup may purge them (UTC)
    error: str | None = None  # the refusal code of a run that could not proceed (``too_many_running``, ...)
    cancelled: bool = False
    aborted: bool = False
    duration_s: float = 0.0
    # Not part of the document: totals the flows use for manifests and summaries.
    objects: int = 0
    batches: int = 0
    failed_count: int = field(default=0, init=False)
    spool: Any = field(default=None, init=False, repr=False)  # videolib.report.ErrorSpool, once an error came

    def __post_init__(self) -> None:
        given, self.errors = self.errors, []
        if given:
            self.add_errors(given)

    @property
    def failed(self) -> int:
        return self.failed_count

    @property
    def errors_truncated(self) -> bool:
        return self.failed_count > len(self.errors)

    @property
    def status(self) -> str:
        return decide_status(
            succeeded=self.succeeded, failed=self.failed, cancelled=self.cancelled, aborted=self.aborted
        )

    def add(self, outcome: BatchOutcome) -> None:
        self.succeeded += outcome.n_succeeded
        self.add_errors(outcome.errors)
        self.skipped += outcome.skipped
        self.objects += outcome.objects
        if outcome.not_selected:
            self.not_selected = dict(self.not_selected or {})
            for reason, n in outcome.not_selected.items():
                self.not_selected[reason] = self.not_selected.get(reason, 0) + n
                self.requested -= n
        if self.trashed is not None:
            self.trashed += int(outcome.extra.get("trashed", 0))
        if self.verified is not None:
            for name, n in outcome.extra.get("verified", {}).items():
                self.verified[name] = self.verified.get(name, 0) + int(n)
        if self.cleanup is not None:
            for name, n in outcome.extra.get("cleanup", {}).items():
                self.cleanup[name] = self.cleanup.get(name, 0) + int(n)
        if self.plan is not None:
            unit = "items" if "items" in self.plan else "videos"  # cleanup plans items of every kind
            self.plan[unit] = self.plan.get(unit, 0) + outcome.n_succeeded
            self.plan["objects"] = self.plan.get("objects", 0) + outcome.objects
            self.plan["bytes"] = self.plan.get("bytes", 0) + outcome.bytes

    def add_errors(self, errors: Iterable[ItemError]) -> None:
        """Count these per-item errors: the document keeps the first
        DOCUMENT_ERROR_ROWS, the report's spool every one (a dry run writes no report)."""
        errors = errors if isinstance(errors, list) else list(errors)
        if not errors:
            return
        room = DOCUMENT_ERROR_ROWS - len(self.errors)
        if room > 0:
            self.errors.extend(errors[:room])
        self.failed_count += len(errors)
        if not self.dry_run:
            if self.spool is None:
                from videolib.report import ErrorSpool

                self.spool = ErrorSpool()
            self.spool.add(errors)

    def write_report(self, store, key: str) -> None:
        """Every per-item error as the CSV report at ``key`` (streamed from the spool)."""
        if self.spool is None:
            raise RuntimeError("no errors spooled for a report (a dry run, or the spool was closed)")
        self.spool.write_to(store, key)

    def close(self) -> None:
        """Drop the report's spool (a temporary file once it outgrew memory); no report
        can be written after this."""
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def count_unstarted(self) -> None:
        """A run that could not proceed never reached some of what it selected: those
        items count as skipped, so that requested = succeeded + failed + skipped holds
        for every ending (a quota refusal, an unreachable store, a broken writer, a cancel)."""
        unstarted = self.requested - (self.succeeded + self.failed + self.skipped)
        if (self.aborted or self.cancelled) and unstarted > 0:
            self.skipped += unstarted

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation_id": self.operation_id,
            "operation": self.operation,
            "creator_id": self.creator_id,
            "status": self.status,
            "requested": self.requested,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "not_selected": self.not_selected,
            "errors": [e.to_dict() for e in self.errors],
            "report_path": self.report_path,
            "output": self.output,
            "plan": self.plan,
            "dry_run": self.dry_run,
            "duration_s": round(self.duration_s, 3),
            "manifest_path": self.manifest_path,
            "message": self.message,
            **({"retry_of": self.retry_of} if self.retry_of else {}),
            **({"manifest": dict(self.manifest)} if self.manifest else {}),
            **({"cleanup": dict(self.cleanup)} if self.cleanup is not None else {}),
            **({"verified": dict(self.verified)} if self.verified is not None else {}),
            **({"trashed": self.trashed, "purge_after": self.purge_after} if self.trashed is not None else {}),
            **({"error": self.error} if self.error else {}),
            **({"errors_truncated": True} if self.errors_truncated else {}),
        }
