"""The local side of the store: paths under a directory, checked against symlinks that
lead out of it, written through a temporary name, and emptied directories pruned."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading

from videolib.storage.keys import UnsafeKeyError

log = logging.getLogger(__name__)


class LocalCalls:
    """Mixed into ``ObjectStore`` for local roots (``self.root`` an absolute real path,
    ``self._root_prefix`` it with a trailing separator)."""

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

    @staticmethod
    def _local_size(path: str) -> int | None:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        # A directory is not an object (S3 would not find one either).
        return None if stat.S_ISDIR(st.st_mode) else st.st_size

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
