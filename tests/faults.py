"""Fault injection over real parts, for the tests: not mocks, real stores that die at a
chosen step."""

from __future__ import annotations

from videolib.storage import ObjectStore


class CrashingStore(ObjectStore):
    """A real store that dies at a chosen step (fault injection, not a mock)."""

    def __init__(self, inner: ObjectStore, *, fail_delete: bool = False, fail_keys: set[str] | None = None,
                 fail_put_prefix: str | None = None, silent_keys: set[str] | None = None,
                 fail_put_number: int | None = None) -> None:
        super().__init__(inner.fs, inner.root)
        self.fail_delete = fail_delete
        self.fail_keys = fail_keys or set()
        self.fail_put_prefix = fail_put_prefix
        # Deletes of these keys answer success and leave the object (a storage fault: a
        # replica that missed the delete, a lying proxy): only reading back finds them.
        self.silent_keys = silent_keys or set()
        # With a prefix: only the put number ``fail_put_number`` (1 = the first) under it dies.
        self.fail_put_number = fail_put_number
        self.puts = 0

    def delete_many(self, keys, **kwargs):
        keys = list(keys)
        if self.fail_delete:
            # Half the objects go, then the process "dies".
            super().delete_many(keys[: len(keys) // 2], **kwargs)
            raise ConnectionError("injected crash during object deletes")
        errors = super().delete_many([k for k in keys if k not in self.fail_keys | self.silent_keys], **kwargs)
        errors.update({k: "injected: AccessDenied" for k in keys if k in self.fail_keys})
        return errors

    def put(self, key, data):
        if self.fail_put_prefix and key.startswith(self.fail_put_prefix):
            self.puts += 1
            if self.fail_put_number is None or self.puts == self.fail_put_number:
                raise ConnectionError("injected crash while writing the manifest")
        return super().put(key, data)
