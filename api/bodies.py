"""The POST bodies: the CLI's options as JSON, one model per operation.

Unknown fields are refused (``usage``), so a typo never silently changes what runs.
Ids are taken as text whatever their JSON type: a malformed one is a per-item
``invalid_id`` in the result, never a refusal of the request (CONTRACT.md).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.requests import RequestError


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    creator_id: str | None = Field(None, description="the creator acted for; a service token must name it, a "
                                                     "creator token may only name its own")
    video_ids: list[Any] | None = Field(None, description="ids to act on (at most BULKOPS_MAX_IDS); malformed, "
                                                          "unknown or others' ids are per-item errors")
    all: bool = Field(False, description="every video of the creator (instead of `video_ids`)")
    manifest: str | None = Field(None, max_length=512, description=(
        "instead of `video_ids`: an id manifest's key (manifests/<creator_id>/..., from POST /bulk/manifests), for "
        "selections of up to BULKOPS_MAX_MANIFEST_IDS ids"))

    @field_validator("video_ids")
    @classmethod
    def _as_text(cls, value: list[Any] | None) -> list[str] | None:
        if value is None:
            return None
        return [item if isinstance(item, str) else json.dumps(item)[:200] for item in value]

    selection_optional: ClassVar[bool] = False  # an export without ids exports everything

    def check_selection(self) -> None:
        """Exactly one of ``video_ids`` and ``all`` (as the CLI asks one of --ids,
        --ids-file, --all): ``bad_selection`` otherwise."""
        given = [name for name, value in (("video_ids", self.video_ids is not None), ("all", self.all),
                                          ("manifest", self.manifest is not None)) if value]
        if len(given) > 1 or (not given and not self.selection_optional):
            raise RequestError("bad_selection", "select videos with exactly one of `video_ids` (a list of ids), "
                                                "`\"all\": true` or `manifest` (a key from POST /bulk/manifests)"
                                                + (f"; got {' and '.join(given)}" if given else ""))

    def options(self) -> dict[str, Any]:
        """The request's options for ``service.requests`` (``build(**options)``)."""
        options = self.model_dump(exclude={"creator_id", "all", "video_ids"}, exclude_none=True)
        if self.video_ids is not None:
            options["video_ids"] = self.video_ids
        if self.all:
            options["all_videos"] = True
        return options


class DeleteBody(_Body):
    dry_run: bool = Field(False, description="report what would be deleted; change nothing")
    batch_size: int | None = Field(None, ge=1, le=100_000, description="videos per batch")
    split: int | None = Field(None, ge=1, le=16, description=(
        "run the batches as this many child runs on the work pool's workers (default BULKOPS_SPLIT, 1)"))
    confirm: int | None = Field(None, ge=0, description=(
        "with `all` over BULKOPS_CONFIRM_OVER videos: the `plan.videos` of a dry run"))

    def options(self) -> dict[str, Any]:
        options = super().options()
        options.pop("confirm", None)
        return options


class ExportBody(_Body):
    selection_optional: ClassVar[bool] = True

    format: str | None = Field(None, description="parquet or csv")
    columns: list[str] | str | None = Field(None, description="a subset of the columns (list, or comma-separated)")
    status: str | None = Field(None, description="only videos with this status")
    created_after: str | None = Field(None, description="ISO 8601 time (inclusive)")
    created_before: str | None = Field(None, description="ISO 8601 time (exclusive)")
    formula_guard: bool = Field(True, description="CSV: prefix cells starting with = + - @ so that spreadsheets "
                                                  "do not run them")
    batch_size: int | None = Field(None, ge=100, le=1_000_000, description="rows per task")
    split: int | None = Field(None, ge=1, le=16, description=(
        "run the batches as this many child runs on the work pool's workers (default BULKOPS_SPLIT, 1)"))

    def options(self) -> dict[str, Any]:
        options = super().options()
        options.pop("all_videos", None)  # an export without ids exports everything
        options.setdefault("format", None)
        return options


class ReprocessBody(_Body):
    embedder: str | None = Field(None, description="hashing or minilm (default BULKOPS_EMBEDDER)")
    chunk_target: int = Field(80, description="most words (or tokens) per chunk")
    chunk_overlap: int = Field(16, description="words (or tokens) of overlap")
    chunk_unit: str = Field("words", description="words or tokens")
    batch_size: int | None = Field(None, ge=1, le=100_000, description="videos per batch")
    split: int | None = Field(None, ge=1, le=16, description=(
        "run the batches as this many child runs on the work pool's workers (default BULKOPS_SPLIT, 1)"))


class RestoreBody(_Body):
    """``POST /bulk/restore``: trashed videos back, by id or by the delete that trashed them."""

    manifest: None = Field(None, description="restore takes `video_ids` or `operation`, not a manifest")

    operation: str | None = Field(None, description="a delete's operation id: restore every video it trashed that "
                                                    "is still in the trash (instead of `video_ids`)")
    dry_run: bool = Field(False, description="report what would be restored; change nothing")
    batch_size: int | None = Field(None, ge=1, le=100_000, description="videos per batch")

    def check_selection(self) -> None:
        given = [name for name, value in (("video_ids", self.video_ids is not None),
                                          ("operation", self.operation is not None), ("all", self.all)) if value]
        if len(given) != 1 or self.all:
            raise RequestError("bad_selection", "select trashed videos with exactly one of `video_ids` or "
                                                "`operation` (a delete's id)" + (f"; got {' and '.join(given)}"
                                                                                 if given else ""))

    def options(self) -> dict[str, Any]:
        options = super().options()
        operation = options.pop("operation", None)
        if operation is not None:
            options["delete_operation"] = operation
        return options


class CleanupBody(BaseModel):
    """``POST /bulk/cleanup``: the whole library's cleanup (a service token)."""

    model_config = ConfigDict(extra="forbid")

    dry_run: bool = Field(False, description="report what would be done (counts and bytes); change nothing")
    batch_size: int | None = Field(None, ge=1, le=100_000, description="items per batch")
