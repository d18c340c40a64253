"""Operations that ``bulkops serve`` executes in its own, already warm process, for the
CLI on the same machine: a runner starts a new Python process per run (importing
Prefect again, ~3 s here), and a CLI that runs the flow itself imports Prefect (1.5 s
of its 2.4 s). With a ``serve`` running, ``bulkops delete|export|reprocess`` (waiting,
without ``--verbose``) sends its request to the API with the header ``X-Bulkops-Run-Here:
1`` and the service token ``serve`` left for it in ``.data/serve.json`` (readable by its
owner only), follows the run over Server-Sent Events and prints its result as if it had
run it (``service/remote.py``).

The run is the same flow run (the creator's tag, slot and limit, progress, result
artifact, cancel from anywhere, the Prefect UI), executed in a thread here: at most
``--limit`` at once (beyond that, the runner takes them, as for any POST). Stopping
``serve`` cancels them softly and waits for their results, like the runner's.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import Any

from service.requests import OperationRequest

log = logging.getLogger(__name__)

HEADER = "X-Bulkops-Run-Here"
CREATED_WAIT_S = 120.0

_executor: InlineRuns | None = None


class InlineRuns:
    """The runs this process executes itself, at most ``limit`` at once."""

    def __init__(self, limit: int):
        self._slots = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}

    def start(self, request: OperationRequest) -> str | None:
        """Start ``request``'s run in a thread here; its operation id once the run exists,
        or None when ``limit`` runs are going (the caller hands it to the runner).
        Refusals (``RequestError``: the request, the library, the creator's limit) are
        raised before anything starts, as :func:`service.launch.submit` raises them."""
        from service.launch import check, prepare, run
        from service.slots import admission

        if not self._slots.acquire(blocking=False):
            return None
        created = threading.Event()
        box: dict[str, Any] = {}
        thread: threading.Thread | None = None

        def listener(event) -> None:  # every run's events come here: take this thread's
            if event.phase == "created" and threading.current_thread() is thread and "id" not in box:
                box["id"] = event.operation_id
                with self._lock:
                    self._threads[event.operation_id] = thread
                created.set()

        def go() -> None:
            try:
                run(request, listener=listener, parameters=box.pop("parameters"), admitted=True)
            except BaseException as exc:  # noqa: BLE001 - before the run exists: the caller raises it
                box.setdefault("error", exc)
                if "id" in box:
                    log.exception("run %s ended with an error", box["id"])
            finally:
                created.set()
                with self._lock:
                    self._threads.pop(box.get("id", ""), None)
                self._slots.release()

        try:
            with admission(request.creator_id):  # counted and created under the creator's lock
                box["parameters"] = prepare(request, store=check(request))
                thread = threading.Thread(target=contextvars.copy_context().run, args=(go,),
                                          name="bulkops-inline-run", daemon=True)
                thread.start()
                created.wait(CREATED_WAIT_S)
        except BaseException:
            if thread is None:
                self._slots.release()
            raise
        if "id" not in box:
            raise box.get("error") or RuntimeError("the run did not start")
        return box["id"]

    def running(self) -> list[str]:
        with self._lock:
            return sorted(self._threads)

    def join(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds for the runs here to end; those still going."""
        import time

        deadline = time.monotonic() + timeout
        with self._lock:
            threads = dict(self._threads)
        for thread in threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        return self.running()


def enable(limit: int) -> InlineRuns:
    """This process executes CLI runs itself from now on (``bulkops serve`` with a runner)."""
    global _executor
    _executor = InlineRuns(limit)
    return _executor


def executor() -> InlineRuns | None:
    return _executor
