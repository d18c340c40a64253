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
    """One embedder per name and process (a model loads once, whatever the batches: in
    the flow's process, or once per Dask worker). Its model loads here, and the run's
    log says where and how long it took."""
    import logging
    import os
    import time

    started = time.monotonic()
    embedder = get_embedder(name)
    load = getattr(embedder, "load", None)
    if load is not None:
        load()
    try:
        from prefect import get_run_logger

        logger = get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run (a check, a benchmark): the module's logger
        logger = logging.getLogger(__name__)
    logger.info("embedder %s loaded in process %s (%.1fs)", name, os.getpid(), time.monotonic() - started)
    return embedder


class PrefectHolders:
    """Which runs holding claims have ended, as Prefect knows it (``videolib.takeover``):
    a run in a final state (Completed, Failed, Cancelled, Crashed). A run Prefect does
    not know (or cannot be asked about) has not ended as far as we know: its claims
    wait for the lease."""

    FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})

    def finished(self, run_ids):
        """The runs among ``run_ids`` in a final state."""
        return {run_id for run_id, state in self.states(run_ids).items() if state in self.FINAL}

    def alive(self, run_ids):
        """The runs among ``run_ids`` Prefect knows in a state that has not ended."""
        return {run_id for run_id, state in self.states(run_ids).items() if state not in self.FINAL}

    def states(self, run_ids) -> dict[str, str]:
        """``{run id: Prefect state type}`` of the runs Prefect knows among ``run_ids``
        (nothing when it cannot be asked: then the lease decides)."""
        import uuid

        from prefect import get_client

        ids = []
        for run_id in run_ids:
            try:
                ids.append(str(uuid.UUID(str(run_id))))
            except ValueError:
                continue
        states: dict[str, str] = {}
        try:
            with get_client(sync_client=True) as client:
                for start in range(0, len(ids), 200):  # the API's page size
                    response = client.request("POST", "/flow_runs/filter", json={
                        "flow_runs": {"id": {"any_": ids[start:start + 200]}}, "limit": 200, "offset": 0})
                    for run in response.json():
                        states[run["id"]] = (run.get("state") or {}).get("type") or "PENDING"
        except Exception:  # noqa: BLE001 - without an answer, the lease decides
            return {}
        return states


HOLDERS = PrefectHolders()
