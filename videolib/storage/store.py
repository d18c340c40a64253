"""The object store: keys under one root, on any fsspec filesystem.

A local directory (the embedded default, ``local.py``) and S3 through s3fs (``s3.py``)
are the two real backends; their hot paths (bulk deletes, HEADs, writes) talk to them
directly, and any other fsspec filesystem works through fsspec's generic calls. Every
method that takes a key validates it first (``keys.py``), and local paths are resolved
to check that no symlink leads out of the root.

By hand::

    python -c "from videolib.storage import ObjectStore; s = ObjectStore.from_settings(); print(s.list_keys('videos'))"
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from videolib.storage.base import STAGING_SUFFIX, StorageUnavailable, check_in_flight, mtime, why
from videolib.storage.keys import UnsafeKeyError, unique_keys, validate_key, validate_prefix
from videolib.storage.local import LocalCalls
from videolib.storage.s3 import S3Calls

log = logging.getLogger(__name__)


class ObjectStore(LocalCalls, S3Calls):
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
                raise StorageUnavailable(url, f"cannot create the directory {path!r}: {why(exc)}") from exc
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
                raise StorageUnavailable(self.url, f"cannot write under {self.root!r}: {why(exc)}") from exc
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

    # ------------------------------------------------------------------ writes

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` (replacing it); local parent directories are created."""
        validate_key(key)
        if self._local:
            self._local_put(self._local_path(key), data)
        else:
            self.fs.pipe_file(self.path(key), data)

    def put_many(self, items: dict[str, bytes], *, max_in_flight: int = 32, atomic: bool = True) -> None:
        """Write several objects; on S3 up to ``max_in_flight`` uploads run at once.

        Local writes go through a temporary file and a rename unless ``atomic=False``
        (new objects that nobody reads yet, such as a seeded library: half the file
        system operations).

        Every key is validated before anything is written. Raises on the first failure
        (objects already written stay written; a put is idempotent, so retry the call).
        """
        check_in_flight("max_in_flight", max_in_flight)
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

    def sizes(self, keys: Iterable[str], *, max_in_flight: int = 32) -> dict[str, int | None]:
        """Sizes of several objects (None for missing ones); on S3 concurrent HEADs."""
        check_in_flight("max_in_flight", max_in_flight)
        unique = unique_keys(keys)
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

    def present(self, keys: Iterable[str], *, max_in_flight: int = 32) -> set[str]:
        """Which of ``keys`` exist now, as storage itself answers a read (a delete's
        proof, never what the delete call answered): a ``stat`` per key on a local
        store; on S3 a listing per group of neighbouring keys (a HEAD per key where a
        group's prefix holds many other objects)."""
        check_in_flight("max_in_flight", max_in_flight)
        unique = unique_keys(keys)
        if not unique:
            return set()
        if self.is_s3 and not self._local:
            for key in unique:
                validate_key(key)
            return self._run(self._s3_present, unique, max_in_flight)
        return {key for key, size in self.sizes(unique, max_in_flight=max_in_flight).items() if size is not None}

    def list_keys(self, prefix: str) -> list[str]:
        """Sorted keys at or under ``prefix`` (a key or "directory"; "" for all).

        Walks the tree: for tests and small prefixes, never for a whole library.
        """
        return sorted(self.list_modified(prefix))

    def list_modified(self, prefix: str) -> dict[str, float]:
        """``{key: last modified (epoch seconds)}`` for the keys at or under ``prefix``
        (as :meth:`list_keys`: for small prefixes)."""
        prefix = validate_prefix(prefix)
        if self._local:
            return self._local_list(prefix)
        if self.is_s3:
            return self._run(self._s3_list, prefix)
        base = f"{self.root}/{prefix}" if prefix else self.root
        self.fs.invalidate_cache(base)
        strip = len(self.root) + 1
        found = {
            path[strip:]: mtime(info)
            for path, info in self.fs.find(base, withdirs=False, detail=True).items()
            if info.get("type") == "file" and path.startswith(self.root + "/")
        }
        return {k: t for k, t in found.items() if not prefix or k == prefix or k.startswith(prefix + "/")}

    def list_children(self, prefix: str) -> list[str]:
        """Sorted names of the "directories" right under ``prefix`` (``videos`` ->
        ``["creator-001", ...]``): one level, without walking what lies below."""
        prefix = validate_prefix(prefix)
        if self._local:
            base = self._local_path(prefix) if prefix else self.root
            try:
                with os.scandir(base) as entries:
                    return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
            except (FileNotFoundError, NotADirectoryError):
                return []
        if self.is_s3:
            return self._run(self._s3_children, prefix)
        base = f"{self.root}/{prefix}" if prefix else self.root
        try:
            return sorted(info["name"].rstrip("/").rsplit("/", 1)[-1]
                          for info in self.fs.ls(base, detail=True) if info.get("type") == "directory")
        except FileNotFoundError:
            return []

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
        check_in_flight("max_in_flight", max_in_flight)
        unique = unique_keys(keys)
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
