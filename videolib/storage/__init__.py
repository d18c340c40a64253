"""Object storage for the library: keys under one root, on any fsspec filesystem.

``store.ObjectStore`` is the store; its local side is ``local``, its S3 side (bulk
deletes that read every per-key error, concurrent HEADs and writes) is ``s3``; keys are
checked by ``keys``.
"""

from videolib.storage.base import STAGING_SUFFIX, StorageUnavailable
from videolib.storage.keys import MAX_KEY_BYTES, UnsafeKeyError, validate_key
from videolib.storage.s3 import DELETE_BATCH
from videolib.storage.store import ObjectStore

__all__ = ["DELETE_BATCH", "MAX_KEY_BYTES", "STAGING_SUFFIX", "ObjectStore", "StorageUnavailable", "UnsafeKeyError",
           "validate_key"]
