"""The S3 side of the store: the calls it makes to S3 directly through s3fs's client.

s3fs's own helpers do not fit the hot paths: ``rm`` sends DeleteObjects in Quiet mode
and ignores the per-key errors in the answer, ``info``/``exists`` fall back to a listing
and answer from a listing cache, ``find`` answers an emptied prefix with the "directory"
(SeaweedFS keeps it). These run on s3fs's event loop, several requests in flight.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os

from videolib.storage.base import StorageUnavailable, chunks, gather_all, mtime

log = logging.getLogger(__name__)

# S3's hard limit: DeleteObjects takes at most 1000 keys.
DELETE_BATCH = 1000


class S3Calls:
    """Mixed into ``ObjectStore`` for S3 roots (``self.fs`` is an ``S3FileSystem``,
    ``self._bucket`` and ``self._key_prefix`` split from its root)."""

    def _s3_key(self, key: str) -> str:
        return f"{self._key_prefix}{key}"

    def _run(self, coro_fn, *args, **kwargs):
        """Run one of our coroutines on s3fs's event loop thread and wait for it."""
        from fsspec.asyn import sync

        return sync(self.fs.loop, coro_fn, *args, **kwargs)

    async def _s3_probe(self) -> None:
        try:
            await self.fs._call_s3("list_objects_v2", Bucket=self._bucket, Prefix=self._key_prefix, MaxKeys=1)
        except FileNotFoundError as exc:  # s3fs's translation of NoSuchBucket
            raise StorageUnavailable(self.url, f"the bucket {self._bucket!r} does not exist") from exc
        except PermissionError as exc:
            raise StorageUnavailable(self.url, f"access to the bucket {self._bucket!r} was denied: {exc}") from exc

    async def _s3_put_many(self, items: dict[str, bytes], max_in_flight: int) -> None:
        semaphore = asyncio.Semaphore(max_in_flight)

        async def one(key: str, data: bytes) -> None:
            async with semaphore:
                await self.fs._pipe_file(f"{self.root}/{key}", data)

        await gather_all(one(key, data) for key, data in items.items())

    async def _s3_head(self, key: str) -> int | None:
        out = await self._s3_head_object(key)
        return None if out is None else int(out["ContentLength"])

    async def _s3_head_object(self, key: str) -> dict | None:
        # head_object directly: s3fs's info()/exists() fall back to a listing when the
        # HEAD misses (to find "directories") and answer from its listing cache.
        try:
            return await self.fs._call_s3("head_object", Bucket=self._bucket, Key=self._s3_key(key))
        except FileNotFoundError:
            return None

    async def _s3_sizes(self, keys: list[str], max_in_flight: int) -> dict[str, int | None]:
        semaphore = asyncio.Semaphore(max_in_flight)

        async def one(key: str) -> int | None:
            async with semaphore:
                return await self._s3_head(key)

        return dict(zip(keys, await gather_all(one(key) for key in keys)))

    async def _s3_list(self, prefix: str) -> dict[str, float]:
        # ListObjectsV2 directly: s3fs's find() answers an emptied prefix with the
        # "directory" itself, because SeaweedFS keeps empty directories after deletes.
        s3_prefix = self._s3_key(prefix) + "/" if prefix else self._key_prefix
        strip = len(self._key_prefix)
        keys: dict[str, float] = {}
        token: str | None = None
        while True:
            kwargs = {"ContinuationToken": token} if token else {}
            page = await self.fs._call_s3(
                "list_objects_v2", Bucket=self._bucket, Prefix=s3_prefix, **kwargs
            )
            # Keys ending in "/" are directory placeholders, not objects.
            keys.update((item["Key"][strip:], mtime(item)) for item in page.get("Contents", [])
                        if not item["Key"].endswith("/"))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                break
        if prefix:
            head = await self._s3_head_object(prefix)
            if head is not None:
                keys[prefix] = mtime(head)
        return keys

    async def _s3_present(self, keys: list[str], max_in_flight: int) -> set[str]:
        """Which of ``keys`` exist, read back by listing: the keys are grouped under
        prefixes a little longer than what they share (:func:`prefix_groups`), one
        listing per group, several in flight. After a delete of neighbouring videos
        each listing answers "nothing here" in one request for dozens of keys. A group
        whose prefix holds many other objects (a sparse selection) is asked by a HEAD
        per key instead. (A listing from ``StartAfter`` would be one request on AWS,
        but SeaweedFS walks every entry after the marker to answer it.)"""
        semaphore = asyncio.Semaphore(max_in_flight)

        async def one(prefix: str, members: list[str]) -> set[str]:
            wanted, found = {self._s3_key(key) for key in members}, set()
            last = self._s3_key(members[-1])
            token: str | None = None
            async with semaphore:
                for _ in range(2 + 2 * math.ceil(len(members) / 1000)):
                    kwargs = {"ContinuationToken": token} if token else {}
                    page = await self.fs._call_s3("list_objects_v2", Bucket=self._bucket,
                                                  Prefix=self._s3_key(prefix), **kwargs)
                    contents = page.get("Contents", [])
                    found.update(item["Key"] for item in contents if item["Key"] in wanted)
                    token = page.get("NextContinuationToken")
                    if not page.get("IsTruncated") or not token or (contents and contents[-1]["Key"] >= last):
                        strip = len(self._key_prefix)
                        return {key[strip:] for key in found}
                return {key for key in members if await self._s3_head_object(key) is not None}

        groups = prefix_groups(sorted(keys))
        return set().union(*await gather_all(one(prefix, members) for prefix, members in groups.items()))

    async def _s3_children(self, prefix: str) -> list[str]:
        s3_prefix = self._s3_key(prefix) + "/" if prefix else self._key_prefix
        names: set[str] = set()
        token: str | None = None
        while True:
            kwargs = {"ContinuationToken": token} if token else {}
            page = await self.fs._call_s3("list_objects_v2", Bucket=self._bucket, Prefix=s3_prefix,
                                          Delimiter="/", **kwargs)
            names.update(item["Prefix"][len(s3_prefix):].rstrip("/") for item in page.get("CommonPrefixes", []))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return sorted(name for name in names if name)

    def _s3_delete_many(self, keys: list[str], *, max_in_flight: int) -> dict[str, str]:
        errors = self._run(
            self._s3_delete_objects,
            [self._s3_key(key) for key in keys],
            max_in_flight,
        )
        # s3fs caches listings per directory; drop the ones these keys lived in.
        for parent in {f"{self.root}/{key}".rsplit("/", 1)[0] for key in keys}:
            self.fs.invalidate_cache(parent)
        strip = len(self._key_prefix)
        return {
            (s3_key[strip:] if s3_key.startswith(self._key_prefix) else s3_key): message
            for s3_key, message in errors.items()
        }

    async def _s3_delete_objects(self, s3_keys: list[str], max_in_flight: int) -> dict[str, str]:
        """DeleteObjects over bucket keys (already validated), ``max_in_flight`` requests at once.

        Returns ``{bucket key: error}``. Quiet mode: the response lists only failures.
        """
        semaphore = asyncio.Semaphore(max_in_flight)
        errors: dict[str, str] = {}

        async def one(batch: list[str]) -> None:
            async with semaphore:
                try:
                    response = await self.fs._call_s3(
                        "delete_objects",
                        Bucket=self._bucket,
                        Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                    )
                except Exception as exc:  # the whole request failed: none of its keys is known gone
                    # s3fs translates S3 errors into OSErrors; a FileNotFoundError here
                    # means NoSuchBucket, not "already deleted".
                    message = f"{type(exc).__name__}: {exc}"
                    for key in batch:
                        errors[key] = message
                    return
            requested = set(batch)
            for item in response.get("Errors", []):
                key = item.get("Key")
                if item.get("Code") == "NoSuchKey":
                    continue  # some servers report a missing key as an error; it is gone
                if key not in requested:
                    # Not a key we sent (re-encoded by the server?): still report it as
                    # given, rather than hide a failure.
                    log.warning("DeleteObjects reported an error for a key not sent: %r", key)
                code, message = item.get("Code") or "Error", item.get("Message") or ""
                errors[str(key)] = f"{code}: {message}" if message else code

        await asyncio.gather(*(one(batch) for batch in chunks(s3_keys, DELETE_BATCH)))
        return errors


def prefix_groups(keys: list[str], *, per_group: int = 8) -> dict[str, list[str]]:
    """Sorted ``keys`` grouped under prefixes: their common prefix, extended one
    character at a time while the groups still hold ``per_group`` keys on average. A
    contiguous run of video folders (``videos/c/<id>/...``) comes out as a few dozen
    prefixes that hold nothing else; one video's keys as its own folder."""
    common = os.path.commonprefix(keys)
    best = {common: keys}
    limit = max(1, len(keys) // per_group)
    for extra in range(1, 64):
        groups: dict[str, list[str]] = {}
        for key in keys:
            groups.setdefault(key[:len(common) + extra], []).append(key)
        if len(groups) > limit:
            break
        best = groups
    return best
