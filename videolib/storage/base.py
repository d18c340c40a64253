"""What the store's parts share: its one error for a store that cannot be used, and
small helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

# Suffix of a local object being written (see ObjectStore.staging_key).
STAGING_SUFFIX = ".partial"


class StorageUnavailable(RuntimeError):
    """The configured storage cannot be used at all: ``url`` and what is wrong with it."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"storage {url!r} cannot be used: {reason}")
        self.url = url
        self.reason = reason

    def refusal(self):
        """The contract's refusal for it: ``storage_unavailable``, naming what to fix."""
        from videolib.ids import RequestError

        settings = "BULKOPS_STORAGE_URL" + (" and BULKOPS_S3_ENDPOINT_URL" if self.url.startswith("s3") else "")
        return RequestError("storage_unavailable", f"{self} (check {settings})")


def mtime(info: dict) -> float:
    """Epoch seconds of an fsspec or S3 listing entry's modification time (0.0 if none)."""
    value = info.get("LastModified", info.get("mtime", info.get("created")))
    if value is None:
        return 0.0
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def gather_all(coros: Iterable) -> list:
    """Await every coroutine, then raise the first failure: none is left running."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def check_in_flight(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
