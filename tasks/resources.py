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


class PrefectHolders:
    """Which runs holding claims have ended, as Prefect knows it (``videolib.takeover``):
    a run in a final state (Completed, Failed, Cancelled, Crashed). A run Prefect does
    not know (or cannot be asked about) has not ended as far as we know: its claims
    wait for the lease."""

    FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})

    def finished(self, run_ids):
        import uuid

        from prefect import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        ids = []
        for run_id in run_ids:
            try:
                ids.append(uuid.UUID(str(run_id)))
            except ValueError:
                continue
        if not ids:
            return set()
        try:
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                                             limit=len(ids))
        except Exception:  # noqa: BLE001 - without an answer, the lease decides
            return set()
        return {str(run.id) for run in runs if run.state is not None and run.state.type.value in self.FINAL}


HOLDERS = PrefectHolders()
