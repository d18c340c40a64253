"""The task runner an operation's batches run on (``BULKOPS_TASK_RUNNER``).

``threads`` (the default): Prefect's thread pool in the flow's own process,
``BULKOPS_TASK_WORKERS`` batches at once. ``dask``: a Dask cluster through
prefect-dask, for CPU-heavy batches (reprocess with the real model): the one at
``BULKOPS_DASK_ADDRESS``, or a ``LocalCluster`` started for the run with one
single-threaded worker process per core. A Dask worker keeps its embedder between
batches (``tasks.resources.embedder_for``: the model loads once per worker), and the
batches' progress reaches the flow through Prefect (``tasks.ticks``).
"""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from config import get_settings
from videolib.ids import RequestError
from videolib.machine import cores


def task_runner() -> TaskRunner:
    """A new task runner for an operation's flow, as the settings say."""
    settings = get_settings()
    if settings.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if settings.dask_address:
            return DaskTaskRunner(address=settings.dask_address)
        return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
            "n_workers": cores(), "threads_per_worker": 1, "processes": True,
            # No dashboard: it would take port 8787, and two runs on one machine collide.
            "dashboard_address": None,
        })
    return ThreadPoolTaskRunner(max_workers=settings.task_workers)


def ready_deployment(flow_name: str) -> str:
    """The deployment that runs ``flow_name`` (``{flow}/{flow}``, as prefect.yaml names
    them), once something polls for its runs: an online worker in its work pool, or a
    ``serve()`` runner. ``no_runner`` otherwise, naming what to start."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    name = f"{flow_name}/{flow_name}"
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise RequestError("no_runner", f"the Prefect server has no deployment {name}: run `prefect deploy --all` "
                               "in the project directory, then start a worker (prefect worker start --pool "
                               "bulkops)") from None
        ready = _status(deployment) == "READY"
        if not ready and deployment.work_pool_name:
            try:
                ready = _status(client.read_work_pool(deployment.work_pool_name)) == "READY"
            except ObjectNotFound:
                ready = False
    if not ready:
        pool = deployment.work_pool_name or "bulkops"
        raise RequestError("no_runner", f"nothing would execute {name}: no worker is polling work pool {pool!r}; "
                           f"start one with `prefect worker start --pool {pool}`")
    return name


def _status(obj) -> str | None:
    status = getattr(obj, "status", None)
    return getattr(status, "value", status)
