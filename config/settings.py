"""Settings for bulkops, read once from the environment (``BULKOPS_*``).

Relative paths are relative to the working directory. S3 credentials come from
the usual AWS variables (``AWS_ACCESS_KEY_ID`` ...), never from here.
"""

from __future__ import annotations

import re
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


# Valid ids travel to a run as its `video_ids` parameter, 39 bytes of JSON each, and
# Prefect's server refuses parameters over 512 KiB (measured: 13,400 ids pass, 13,500 do
# not). 13,000 leaves room for the other parameters.
MAX_INLINE_IDS = 13_000


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_duration(value: object) -> float:
    """Seconds from ``30``, ``"30"``, ``"30s"``, ``"15m"``, ``"1h"`` or ``"1d"``."""
    if isinstance(value, bool):
        raise ValueError("a duration is seconds, or a number with s, m, h or d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value).lower())
        if not match:
            raise ValueError(f"{value!r} is not a duration: seconds, or a number with s, m, h or d (30s, 15m, 1h)")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from ``1048576``, ``"512KiB"``, ``"1MiB"`` or ``"2GiB"``."""
    if isinstance(value, bool):
        raise ValueError("a size is bytes, or a number with KiB, MiB or GiB")
    if isinstance(value, int):
        size = value
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(b|kib|mib|gib)?\s*", str(value).lower())
        if not match:
            raise ValueError(f"{value!r} is not a size: bytes, or a number with KiB, MiB or GiB (512KiB, 1MiB)")
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2) or ""])
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


_CRON_FIELDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_CRON_NAMES = re.compile(r"^(?:\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/\d+)?$")


def check_cron(value: object) -> str:
    """A five-field cron expression (``0 3 * * *``): minute hour day month weekday, with
    ``*``, lists, ranges, steps and month/day names; its numbers within their ranges."""
    text = str(value).strip().lower()
    if text in ("", "off"):
        return ""  # no schedule
    fields = text.split()
    problem = None
    if len(fields) != 5:
        problem = f"has {len(fields)} fields"
    else:
        for field_text, (low, high) in zip(fields, _CRON_FIELDS):
            for part in field_text.split(","):
                if not _CRON_NAMES.match(part):
                    problem = f"{part!r} is not a cron field"
                    break
                numbers = [int(n) for n in re.findall(r"\d+", part.split("/")[0])]
                if any(not low <= n <= high for n in numbers):
                    problem = f"{part!r} is out of range {low}-{high}"
                    break
            if problem:
                break
    if problem:
        raise ValueError(f"{str(value)[:60]!r} is not a cron schedule ({problem}): five fields, minute hour "
                         "day month weekday, e.g. '0 3 * * *'")
    return " ".join(fields)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BULKOPS_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    database_url: str = Field(
        "sqlite:///.data/bulkops.db",
        description="SQLAlchemy URL (PostgreSQL: postgresql+psycopg://...)",
    )
    storage_url: str = Field(
        ".data/storage", description="fsspec URL of the storage root (s3://bucket/prefix)"
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint URL")
    data_dir: str = Field(".data", description="where the embedded defaults keep their files")
    max_ids: int = Field(
        10_000,
        ge=1,
        le=MAX_INLINE_IDS,
        description="most ids one request may list inline; at most 13,000, because the ids travel as a flow-run "
        "parameter and Prefect refuses parameters over 512 KiB (13,000 ids are ~507 KB of JSON)",
    )
    max_manifest_ids: int = Field(
        10_000_000, ge=1, description="most ids (lines) one id manifest (manifests/<creator>/...) may hold"
    )
    export_quota_bytes: int = Field(
        50 * 1024**3, ge=0, description="per-creator bound on export storage"
    )
    signing_key: SecretStr | None = Field(
        None, description="key for signed download links (generated under data_dir if unset)"
    )
    embedder: str = Field("hashing", description="hashing (built in) or minilm (extra)")
    public_url: str = Field(
        "http://127.0.0.1:8000", description="base URL of the API, for local-storage download links"
    )
    jwt_secret: SecretStr | None = Field(
        None, description="HS256 secret of the API's bearer tokens (`sub` = creator id); `serve` needs it"
    )
    webhook_url: str | None = Field(None, description="where finished operations are POSTed (Standard Webhooks)")
    webhook_secret: SecretStr | None = Field(None, description="`whsec_…` secret signing those POSTs")
    webhook_retry_window: Duration = Field(
        24 * 3600.0, description="how long failed webhook deliveries are retried (with backoff)"
    )

    # The HTTP API and `bulkops serve`
    max_body_bytes: Size = Field(1024**2, ge=1, description="larger API request bodies get 413")
    shutdown_grace: Duration = Field(30.0, description="how long `serve` waits for its runs' results on SIGTERM")
    serve_limit: int = Field(4, ge=1, le=64, description="runs `serve`'s runner executes at once")
    confirm_over: int = Field(
        1000, ge=0, description="an API delete with `all` above this many videos needs `confirm` = a dry run's count"
    )
    max_running_per_creator: int = Field(
        2, ge=0, le=1000, description="operations pending or running per creator, however started (0: no limit)"
    )
    slot_lease: Duration = Field(
        15 * 60.0, ge=60.0, le=24 * 3600.0,
        description="longest a per-creator slot outlives a run that died (Prefect's lease: 60s to 24h)",
    )
    slot_wait: Duration = Field(
        3600.0, ge=0.0, description="how long a run started over the per-creator limit waits for a slot, then ends "
                                    "Cancelled (too_many_running)",
    )

    # The undo window of deletes (videolib/trash.py)
    delete_grace: Duration = Field(
        0.0, ge=0.0, description="undo window: a delete trashes videos (restorable) and cleanup purges them this long "
                                 "after; 0 deletes at once")

    # Scheduled cleanup (flows/cleanup.py)
    cleanup_cron: str = Field("0 3 * * *", description="the cleanup deployment's schedule (cron, UTC; `off`: none)")
    cleanup_tombstone_grace: Duration = Field(
        3600.0, description="age after which cleanup finishes a video left 'deleting' by a crashed delete")
    cleanup_export_grace: Duration = Field(
        86400.0, description="age past its link's expiry after which cleanup removes an export file")
    cleanup_report_retention: Duration = Field(
        90 * 86400.0, description="age after which cleanup removes error reports and audit manifests")
    cleanup_orphan_grace: Duration = Field(
        86400.0, description="age after which an object under videos/ with no row is an orphan")
    cleanup_delete_orphans: bool = Field(False, description="cleanup deletes orphans (otherwise reports them)")
    history_retention: Duration = Field(
        30 * 86400.0, description="Prefect run history kept; older runs live on as records in storage")

    # Operation tuning
    batch_size: int = Field(1000, ge=1, description="default videos per delete batch")
    max_batches: int = Field(
        300, ge=1, description="most task runs one operation maps; batches grow past it"
    )
    task_workers: int = Field(8, ge=1, le=64, description="threads running batches at once")
    split: int = Field(1, ge=1, le=16, description="child runs one operation's batches are split into (--split)")
    task_runner: str = Field(
        "threads", description="where the batches run: 'threads' (in the flow's process) or 'dask' (prefect-dask)")
    dask_address: str | None = Field(
        None, description="an existing Dask scheduler (tcp://host:8786) for BULKOPS_TASK_RUNNER=dask; unset: a "
                          "LocalCluster per run, one single-threaded worker process per core")
    lock_timeout_ms: int = Field(
        5000, ge=0, description="PostgreSQL lock_timeout per delete or reprocess batch"
    )
    reprocess_lease_s: int = Field(
        3600,
        ge=0,
        description="a reprocess claim (status 'processing') older than this, left by a crashed run, "
        "may be taken over by another reprocess",
    )

    @field_validator("task_runner")
    @classmethod
    def _known_task_runner(cls, value: str) -> str:
        if value not in {"threads", "dask"}:
            raise ValueError("`BULKOPS_TASK_RUNNER` must be 'threads' or 'dask'")
        if value == "dask":
            import importlib.util

            if importlib.util.find_spec("prefect_dask") is None:
                raise ValueError("`BULKOPS_TASK_RUNNER=dask` needs prefect-dask: pip install -e '.[dask]'")
        return value

    @field_validator("embedder")
    @classmethod
    def _known_embedder(cls, value: str) -> str:
        if value not in {"hashing", "minilm"}:
            raise ValueError("`BULKOPS_EMBEDDER` must be 'hashing' or 'minilm'")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret_form(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() and not value.get_secret_value().startswith("whsec_"):
            raise ValueError("`BULKOPS_WEBHOOK_SECRET` must be a Standard Webhooks secret: whsec_ and base64")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url_form(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("`BULKOPS_WEBHOOK_URL` must be an http:// or https:// URL")
        return value or None

    @field_validator("cleanup_cron")
    @classmethod
    def _cron_form(cls, value: str) -> str:
        return check_cron(value)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def signing_key_bytes(self) -> bytes:
        """The link-signing key: the setting, or one generated once under data_dir."""
        if self.signing_key is not None:
            return self.signing_key.get_secret_value().encode()
        path = Path(self.data_dir) / "signing.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            try:
                tmp.rename(path) if not path.exists() else tmp.unlink()
            except FileExistsError:
                tmp.unlink(missing_ok=True)
        return path.read_text().strip().encode()


@lru_cache
def get_settings() -> Settings:
    """The process's settings; ``get_settings.cache_clear()`` re-reads the environment."""
    return Settings()
