"""Per-process resources of the batch tasks, built from the settings once: the database
engine, the object store and the embedders (a model loads once per process)."""

from __future__ import annotations

from functools import lru_cache

from config import get_settings
from videolib.db.engine import get_engine
from videolib.embedders import Embedder, get_embedder
from videolib.storage import ObjectStore


def engine():
    return get_engine(get_settings().database_url)


@lru_cache(maxsize=8)
def _store(url: str, endpoint: str | None) -> ObjectStore:
    return ObjectStore.from_url(url, endpoint_url=endpoint)


def store() -> ObjectStore:
    settings = get_settings()
    return _store(settings.storage_url, settings.s3_endpoint_url)


@lru_cache(maxsize=4)
def embedder_for(name: str) -> Embedder:
    """One embedder per name and process (a model loads once, whatever the batches)."""
    return get_embedder(name)
