"""Object storage for the library: keys under one root, on any fsspec filesystem.

A local directory (the embedded default) and S3 through s3fs are the two real
backends; the hot paths (bulk deletes, HEADs, writes) talk to them directly, and any
other fsspec filesystem works through fsspec's generic calls.

Keys are relative to the root and "/"-separated. Every method that takes a key
validates it first (``validate_key``), so nothing outside the root can be named, and
local paths are resolved to check that no symlink leads out of the root.

By hand::

    python -c "from videolib.storage import ObjectStore; s = ObjectStore.from_settings(); print(s.list_keys('videos'))"
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
import contextlib
import errno
import logging
import os
import re
import stat
import threading
from collections.abc import Iterable
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)

# S3's hard limits: keys are at most 1024 UTF-8 bytes; DeleteObjects takes 1000 keys.
MAX_KEY_BYTES = 1024
DELETE_BATCH = 1000

_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# Unicode category Cc: NUL, the C0 controls, DEL and the C1 controls.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class UnsafeKeyError(ValueError):
    """A storage key that could name something outside the store's root (or is malformed)."""


class StorageUnavailable(RuntimeError):
    """The configured storage cannot be used at all: ``url`` and what is wrong with it."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"storage {url!r} cannot be used: {reason}")
        self.url = url
        self.reason = reason


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a safe relative key; raise UnsafeKeyError if not.

    Refused: non-strings, empty keys, absolute keys, backslashes, NUL and other control
    characters, empty segments (``a//b``, a trailing ``/``), ``.`` and ``..`` segments,
    a leading ``~``, anything scheme-like (``s3://...``, ``file:...``) and keys longer
    than S3 allows.
    """
    if not isinstance(key, str):
        raise UnsafeKeyError(f"storage key must be a string, got {type(key).__name__}")
    shown = repr(key)[:120]
    if not key:
        raise UnsafeKeyError("storage key must not be empty")
    if key.startswith("/"):
        raise UnsafeKeyError(f"storage key must be relative, got {shown}")
    if key.startswith("~"):
        raise UnsafeKeyError(f"storage key must not start with '~', got {shown}")
    if "\\" in key:
        raise UnsafeKeyError(f"storage key must not contain a backslash, got {shown}")
    # Newlines in keys break listings and reports; NUL truncates paths in C code.
    if _CONTROL_RE.search(key):
        raise UnsafeKeyError(f"storage key must not contain control characters, got {shown}")
    if "://" in key or _SCHEME_RE.match(key.split("/", 1)[0]):
        raise UnsafeKeyError(f"storage key must not carry a scheme, got {shown}")
    for segment in key.split("/"):
        if segment == "":
            raise UnsafeKeyError(f"storage key must not have empty segments ('//' or a trailing '/'), got {shown}")
        if segment in (".", ".."):
            raise UnsafeKeyError(f"storage key must not have '.' or '..' segments, got {shown}")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates
        raise UnsafeKeyError(f"storage key must be valid unicode, got {shown}") from None
    if size > MAX_KEY_BYTES:
        raise UnsafeKeyError(f"storage key must be at most {MAX_KEY_BYTES} bytes, got {size}")
    return key


def _validate_prefix(prefix: str) -> str:
    """A listing prefix: "" (everything) or a key, with one trailing "/" tolerated."""
    if prefix in ("", "/") and isinstance(prefix, str):
        return ""
    if isinstance(prefix, str) and prefix.endswith("/"):
        prefix = prefix[:-1]
    return validate_key(prefix)


# Suffix of a local object being written (see ObjectStore.staging_key).
STAGING_SUFFIX = ".partial"


def _mtime(info: dict) -> float:
    """Epoch seconds of an fsspec or S3 listing entry's modification time (0.0 if none)."""
    value = info.get("LastModified", info.get("mtime", info.get("created")))
    if value is None:
        return 0.0
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _unique(keys: Iterable[str]) -> list[str]:
    """Validated keys, duplicates dropped, order kept; raises before anything is touched."""
    if isinstance(keys, str):
        raise TypeError("`keys` must be an iterable of keys, not a single string")
    return list(dict.fromkeys(validate_key(key) for key in keys))


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def _gather_all(coros: Iterable) -> list:
    """Await every coroutine, then raise the first failure: none is left running."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def _check_in_flight(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")


class ObjectStore:
    """Keys under ``root`` on the filesystem ``fs``.

    ``root`` is an absolute directory for a local filesystem, ``bucket/prefix`` (or
    ``bucket``) for S3.
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str) -> None:
        self.fs = fs
        self._local = isinstance(fs, LocalFileSystem)
        if self._local:
            if not os.path.isabs(root):
                raise ValueError(f"`root` must be an absolute directory for a local filesystem, got {root!r}")
            # Resolved once, so that containment checks compare real paths with real paths.
            root = os.path.realpath(root)
            self._root_prefix = root.rstrip(os.sep) + os.sep
            self.url = root
        else:
            root = fs._strip_protocol(root).rstrip("/")
            if not root:
                raise ValueError("`root` must name a bucket (and optionally a prefix)")
            self.url = f"s3://{root}" if self.is_s3 else root
        self.root = root
        if self.is_s3:
            self._bucket, _, prefix = root.partition("/")
            self._key_prefix = f"{prefix}/" if prefix else ""

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_url(cls, url: str, *, endpoint_url: str | None = None) -> ObjectStore:
        """A store for ``s3://bucket/prefix`` (s3fs) or a local directory (created if missing).

        Local paths may be relative (to the working directory) or start with ``file://``.
        S3 credentials come from the usual AWS variables.
        """
        if not isinstance(url, str) or not url:
            raise ValueError("`url` must be a non-empty string")
        if url.startswith(("s3://", "s3a://")):
            import s3fs  # imported here: aiobotocore is slow to import and local use never needs it

            client_kwargs = {"endpoint_url": endpoint_url} if endpoint_url else {}
            fs = s3fs.S3FileSystem(client_kwargs=client_kwargs)
            store = cls(fs, url.split("://", 1)[1])
        else:
            path = url[len("file://") :] if url.startswith("file://") else url
            path = os.path.abspath(os.path.expanduser(path))
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:  # under a regular file, under /proc, read-only, no permission
                raise StorageUnavailable(url, f"cannot create the directory {path!r}: {_why(exc)}") from exc
            store = cls(fsspec.filesystem("file"), path)
        store.url = url
        return store

    def check(self) -> None:
        """Raise :class:`StorageUnavailable` unless the store can be written and listed now.

        Local: a probe object is written and removed at the root. S3: one listing of at
        most one key under the prefix (the bucket must exist and answer).
        """
        if self._local:
            probe = os.path.join(self.root, f".bulkops-probe-{os.getpid()}-{threading.get_ident()}")
            try:
                if not os.path.isdir(self.root):
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory")
                with open(probe, "wb") as fh:
                    fh.write(b"ok")
                os.unlink(probe)
            except OSError as exc:
                raise StorageUnavailable(self.url, f"cannot write under {self.root!r}: {_why(exc)}") from exc
            return
        if self.is_s3:
            try:
                self._run(self._s3_probe)
            except StorageUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever the client raised is the reason
                raise StorageUnavailable(self.url, f"{type(exc).__name__}: {exc}") from exc
            return
        try:
            self.fs.ls(self.root)
        except Exception as exc:  # noqa: BLE001
            raise StorageUnavailable(self.url, f"{type(exc).__name__}: {exc}") from exc

    async def _s3_probe(self) -> None:
        try:
            await self.fs._call_s3("list_objects_v2", Bucket=self._bucket, Prefix=self._key_prefix, MaxKeys=1)
        except FileNotFoundError as exc:  # s3fs's translation of NoSuchBucket
            raise StorageUnavailable(self.url, f"the bucket {self._bucket!r} does not exist") from exc
        except PermissionError as exc:
            raise StorageUnavailable(self.url, f"access to the bucket {self._bucket!r} was denied: {exc}") from exc

    @classmethod
    def from_settings(cls, settings: Any = None) -> ObjectStore:
        """The store the settings name (``BULKOPS_STORAGE_URL``, ``BULKOPS_S3_ENDPOINT_URL``)."""
        if settings is None:
            from config import get_settings

            settings = get_settings()
        return cls.from_url(settings.storage_url, endpoint_url=settings.s3_endpoint_url)

    @property
    def is_s3(self) -> bool:
        protocol = self.fs.protocol
        protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
        return "s3" in protocols

    # ------------------------------------------------------------------ paths

    def path(self, key: str) -> str:
        """The full filesystem path of ``key`` (local: checked to stay inside the root)."""
        validate_key(key)
        if self._local:
            return self._local_path(key)
        return f"{self.root}/{key}"

    def _local_path(self, key: str, *, follow_final: bool = True) -> str:
        """Join a validated key to the root and refuse it if symlinks lead outside the root.

        With ``follow_final=False`` only the parent directories are resolved: unlinking a
        symlink removes the link, never its target, so deletes need no more than that.
        """
        path = os.path.join(self.root, key)
        if follow_final:
            real = os.path.realpath(path)
        else:
            parent, name = os.path.split(path)
            real = os.path.join(self._real_dir(parent), name)
        if not real.startswith(self._root_prefix):
            raise UnsafeKeyError(f"storage key {key!r} resolves outside the store's root")
        return path

    def _real_dir(self, directory: str, _cache: dict[str, str] | None = None) -> str:
        """``os.path.realpath(directory)``; with a cache (one bulk call's), a directory that
        is not a symlink (or does not exist) resolves as its cached parent's real path
        plus its name: one ``lstat`` per video folder instead of one per path component
        (``realpath`` of every video's folder was ~8 % of a local bulk delete)."""
        if _cache is None:
            return os.path.realpath(directory)
        real = _cache.get(directory)
        if real is None:
            parent, name = os.path.split(directory)
            try:
                is_link = stat.S_ISLNK(os.lstat(directory).st_mode)
            except FileNotFoundError:
                is_link = False
            if name and name not in (".", "..") and parent and parent != directory and not is_link:
                real = os.path.join(self._real_dir(parent, _cache), name)
            else:
                real = os.path.realpath(directory)
            _cache[directory] = real
        return real

    def _s3_key(self, key: str) -> str:
        return f"{self._key_prefix}{key}"

    def _run(self, coro_fn, *args, **kwargs):
        """Run one of our coroutines on s3fs's event loop thread and wait for it."""
        from fsspec.asyn import sync

        return sync(self.fs.loop, coro_fn, *args, **kwargs)

    # ------------------------------------------------------------------ writes

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` (replacing it); local parent directories are created."""
        validate_key(key)
        if self._local:
            self._local_put(self._local_path(key), data)
        else:
            self.fs.pipe_file(self.path(key), data)

    @staticmethod
    def _local_put(path: str, data: bytes, made: set[str] | None = None, atomic: bool = True) -> None:
        # Written to a temporary name and renamed into place, so that a reader (or a
        # crash) never sees half an object: an S3 PUT is all or nothing too.
        parent, name = os.path.split(path)
        tmp = os.path.join(parent, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp") if atomic else path
        for attempt in range(3):
            if made is None or parent not in made:
                os.makedirs(parent, exist_ok=True)
                if made is not None:
                    made.add(parent)
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                if atomic:
                    os.replace(tmp, path)
                return
            except FileNotFoundError:
                # A concurrent delete_many can remove the parent between makedirs and
                # open when it prunes directories it just emptied; make it again.
                if made is not None:
                    made.discard(parent)
                if attempt == 2:
                    raise
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def put_many(self, items: dict[str, bytes], *, max_in_flight: int = 32, atomic: bool = True) -> None:
        """Write several objects; on S3 up to ``max_in_flight`` uploads run at once.

        Local writes go through a temporary file and a rename unless ``atomic=False``
        (new objects that nobody reads yet, such as a seeded library: half the file
        system operations).

        Every key is validated before anything is written. Raises on the first failure
        (objects already written stay written; a put is idempotent, so retry the call).
        """
        _check_in_flight("max_in_flight", max_in_flight)
        for key in items:
            validate_key(key)
        if not items:
            return
        if self._local:
            made: set[str] = set()
            real_dirs: dict[str, str] = {}
            jobs = []
            for key, data in items.items():
                # Only parents are resolved: the rename replaces a final symlink itself,
                # never its target.
                path = os.path.join(self.root, key)
                parent, name = os.path.split(path)
                if not os.path.join(self._real_dir(parent, real_dirs), name).startswith(self._root_prefix):
                    raise UnsafeKeyError(f"storage key {key!r} resolves outside the store's root")
                jobs.append((path, data))
            if len(jobs) < 64:
                for path, data in jobs:
                    self._local_put(path, data, made, atomic)
            else:
                # Creating files and folders costs ~0.3 ms each on this kind of disk and
                # releases the GIL: a few threads overlap the waits.
                # One contiguous slice per thread (a video's files share a folder), not a
                # future per file: 200k futures cost more than the writes they wait on.
                workers = min(8, max_in_flight)
                size = -(-len(jobs) // workers)

                def put_slice(part: list[tuple[str, bytes]]) -> None:
                    for path, data in part:
                        self._local_put(path, data, made, atomic)

                with ThreadPoolExecutor(max_workers=workers) as pool:
                    for future in [pool.submit(put_slice, jobs[i : i + size]) for i in range(0, len(jobs), size)]:
                        future.result()
        elif self.is_s3:
            self._run(self._s3_put_many, items, max_in_flight)
        else:
            self.fs.pipe({self.path(key): data for key, data in items.items()})

    async def _s3_put_many(self, items: dict[str, bytes], max_in_flight: int) -> None:
        semaphore = asyncio.Semaphore(max_in_flight)

        async def one(key: str, data: bytes) -> None:
            async with semaphore:
                await self.fs._pipe_file(f"{self.root}/{key}", data)

        await _gather_all(one(key, data) for key, data in items.items())

    def open(self, key: str, mode: str = "rb") -> IO[bytes]:
        """A file object for streaming reads or writes (local "w"/"a" modes create parents).

        Locally a streamed write is visible while it is written; on S3 the object
        appears when the file is closed.
        """
        validate_key(key)
        if self._local:
            path = self._local_path(key)
            if any(ch in mode for ch in "wax"):
                os.makedirs(os.path.dirname(path), exist_ok=True)
            return self.fs.open(path, mode)
        return self.fs.open(self.path(key), mode)

    # ------------------------------------------------------------------ reads

    def get(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when it is missing."""
        validate_key(key)
        if self._local:
            with open(self._local_path(key), "rb") as fh:
                return fh.read()
        return self.fs.cat_file(self.path(key))

    def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key`` (S3: one HEAD, never a listing)."""
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None when it is missing."""
        validate_key(key)
        if self._local:
            return self._local_size(self._local_path(key))
        if self.is_s3:
            return self._run(self._s3_head, key)
        try:
            info = self.fs.info(self.path(key))
        except FileNotFoundError:
            return None
        return info["size"] if info.get("type") == "file" else None

    @staticmethod
    def _local_size(path: str) -> int | None:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        # A directory is not an object (S3 would not find one either).
        return None if stat.S_ISDIR(st.st_mode) else st.st_size

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

    def sizes(self, keys: Iterable[str], *, max_in_flight: int = 32) -> dict[str, int | None]:
        """Sizes of several objects (None for missing ones); on S3 concurrent HEADs."""
        _check_in_flight("max_in_flight", max_in_flight)
        unique = _unique(keys)
        if self._local:
            cache: dict[str, str] = {}
            out: dict[str, int | None] = {}
            for key in unique:
                path = os.path.join(self.root, key)
                real_parent = self._real_dir(os.path.dirname(path), cache)
                inside = (real_parent + os.sep).startswith(self._root_prefix)
                if inside and os.path.islink(path):
                    inside = os.path.realpath(path).startswith(self._root_prefix)
                if not inside:
                    raise UnsafeKeyError(f"storage key {key!r} resolves outside the store's root")
                out[key] = self._local_size(path)
            return out
        if self.is_s3:
            return self._run(self._s3_sizes, unique, max_in_flight)
        return {key: self.size(key) for key in unique}

    async def _s3_sizes(self, keys: list[str], max_in_flight: int) -> dict[str, int | None]:
        semaphore = asyncio.Semaphore(max_in_flight)

        async def one(key: str) -> int | None:
            async with semaphore:
                return await self._s3_head(key)

        return dict(zip(keys, await _gather_all(one(key) for key in keys)))

    def list_keys(self, prefix: str) -> list[str]:
        """Sorted keys at or under ``prefix`` (a key or "directory"; "" for all).

        Walks the tree: for tests and small prefixes, never for a whole library.
        """
        return sorted(self.list_modified(prefix))

    def list_modified(self, prefix: str) -> dict[str, float]:
        """``{key: last modified (epoch seconds)}`` for the keys at or under ``prefix``
        (as :meth:`list_keys`: for small prefixes)."""
        prefix = _validate_prefix(prefix)
        if self._local:
            return self._local_list(prefix)
        if self.is_s3:
            return self._run(self._s3_list, prefix)
        base = f"{self.root}/{prefix}" if prefix else self.root
        self.fs.invalidate_cache(base)
        strip = len(self.root) + 1
        found = {
            path[strip:]: _mtime(info)
            for path, info in self.fs.find(base, withdirs=False, detail=True).items()
            if info.get("type") == "file" and path.startswith(self.root + "/")
        }
        return {k: t for k, t in found.items() if not prefix or k == prefix or k.startswith(prefix + "/")}

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
            keys.update((item["Key"][strip:], _mtime(item)) for item in page.get("Contents", [])
                        if not item["Key"].endswith("/"))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                break
        if prefix:
            head = await self._s3_head_object(prefix)
            if head is not None:
                keys[prefix] = _mtime(head)
        return keys

    def _local_list(self, prefix: str) -> dict[str, float]:
        base = self._local_path(prefix) if prefix else self.root
        if os.path.isfile(base):
            return {prefix: os.stat(base).st_mtime}
        keys: dict[str, float] = {}
        for dirpath, _dirs, files in os.walk(base):
            rel = os.path.relpath(dirpath, self.root)
            for name in files:
                try:
                    mtime = os.stat(os.path.join(dirpath, name)).st_mtime
                except FileNotFoundError:  # removed while we walked
                    continue
                keys[name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")] = mtime
        return keys

    # ------------------------------------------------------------------ whole objects

    def staging_key(self, key: str) -> str:
        """Where to write an object that must appear under ``key`` only when complete
        (:meth:`publish` moves it there). On S3 that is ``key`` itself: an upload becomes
        visible only when it completes. Locally a hidden name beside it, renamed into
        place: a reader (or a crash) never sees half a file under the final name."""
        validate_key(key)
        if self.is_s3:
            return key
        parent, _, name = key.rpartition("/")
        return f"{parent}/.{name}{STAGING_SUFFIX}" if parent else f".{name}{STAGING_SUFFIX}"

    def publish(self, staging: str, key: str) -> None:
        """Move a finished object from its :meth:`staging_key` to ``key`` (atomic locally)."""
        if staging == key:
            return
        if self._local:
            os.replace(self._local_path(staging), self._local_path(key))
        else:
            self.fs.mv(self.path(staging), self.path(key))

    def abandon(self, raw: IO[bytes], staging: str) -> None:
        """Drop an unfinished object written through ``raw`` at ``staging``: nothing
        appears under its final name (S3: the multipart upload is aborted)."""
        try:
            if self.is_s3 and hasattr(raw, "discard"):
                raw.discard()
                raw.closed = True  # or its close() (at garbage collection) would flush the discarded buffer
            else:
                raw.close()
        except Exception:  # noqa: BLE001 - the stream may be broken already
            log.debug("closing an abandoned object failed", exc_info=True)
        try:
            self.delete(staging)
        except OSError:
            log.warning("could not remove the unfinished object %s", staging)

    # ------------------------------------------------------------------ deletes

    def delete(self, key: str) -> None:
        """Delete one object; a missing object is fine, any other failure raises OSError."""
        errors = self.delete_many([key])
        if errors:
            raise OSError(f"could not delete {key!r}: {errors[key]}")

    def delete_many(self, keys: Iterable[str], *, max_in_flight: int = 10) -> dict[str, str]:
        """Delete objects; return ``{key: error}`` for those NOT deleted (empty: all gone).

        A missing object counts as deleted. All keys are validated before anything is
        deleted. Local: one unlink per key, then directories left empty are removed up
        to the root. S3: one DeleteObjects request per 1000 keys, ``max_in_flight`` at
        once; per-key errors in the responses (which s3fs's ``rm`` ignores) and failed
        requests are reported per key.
        """
        _check_in_flight("max_in_flight", max_in_flight)
        unique = _unique(keys)
        if not unique:
            return {}
        if self._local:
            errors = self._local_delete_many(unique)
        elif self.is_s3:
            errors = self._s3_delete_many(unique, max_in_flight=max_in_flight)
        else:
            errors = self._generic_delete_many(unique)
        if errors:
            first = next(iter(errors.items()))
            log.warning(
                "could not delete %d of %d objects under %s (first: %s: %s)",
                len(errors), len(unique), self.url, first[0], first[1],
            )
        else:
            log.debug("deleted %d objects under %s", len(unique), self.url)
        return errors

    def _local_delete_many(self, keys: list[str]) -> dict[str, str]:
        # Resolve every parent first (cached per directory) so that a symlink escape
        # raises before a single file is removed.
        cache: dict[str, str] = {}
        paths: list[tuple[str, str]] = []
        for key in keys:
            path = os.path.join(self.root, key)
            parent = os.path.dirname(path)
            real_parent = self._real_dir(parent, cache)
            if not (real_parent + os.sep).startswith(self._root_prefix):
                raise UnsafeKeyError(f"storage key {key!r} resolves outside the store's root")
            paths.append((key, path))

        errors: dict[str, str] = {}
        parents: set[str] = set()
        unlink = os.unlink
        for key, path in paths:
            try:
                unlink(path)
            except (FileNotFoundError, NotADirectoryError):
                pass  # already gone, or a parent is a file: nothing stored at this key
            except IsADirectoryError:
                errors[key] = "is a directory, not an object"
                continue
            except OSError as exc:
                errors[key] = f"{type(exc).__name__}: {exc.strerror or exc}"
                continue
            parents.add(os.path.dirname(path))
        self._prune_empty_dirs(parents)
        return errors

    def _prune_empty_dirs(self, directories: set[str]) -> None:
        """Remove directories left empty, deepest first, walking up to (not incl.) the root."""
        root = self.root
        pending = {d for d in directories if d.startswith(self._root_prefix)}
        while pending:
            depth = max(d.count(os.sep) for d in pending)
            level = {d for d in pending if d.count(os.sep) == depth}
            pending -= level
            for directory in level:
                try:
                    os.rmdir(directory)
                except OSError as exc:
                    # Not empty (the usual case) or already gone: either way, stop here.
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                        log.debug("could not remove directory %s: %s", directory, exc)
                    continue
                parent = os.path.dirname(directory)
                if parent != root and parent.startswith(self._root_prefix):
                    pending.add(parent)

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

        await asyncio.gather(*(one(batch) for batch in _chunks(s3_keys, DELETE_BATCH)))
        return errors

    def _generic_delete_many(self, keys: list[str]) -> dict[str, str]:
        errors: dict[str, str] = {}
        for key in keys:
            try:
                self.fs.rm_file(self.path(key))
            except FileNotFoundError:
                pass
            except OSError as exc:
                errors[key] = f"{type(exc).__name__}: {exc}"
        return errors
