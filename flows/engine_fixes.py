"""A fix to Prefect's flow engine for the release bulkops pins (prefect 3.8.8).

**Heartbeats held every flow run open up to a second after its work.** The sync flow
engine runs a heartbeat thread (``prefect.flow_engine._send_heartbeats``; one event
every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds, 180 by default, so that crashed
runs are detected). The thread waits for its next beat in ``time.sleep(1)`` steps and
checks its stop flag between steps, and the engine joins it when the flow's function
returns: every flow run ended 0-1 s later than its work, 0.5 s on average. Bulk export
totals moved in whole seconds because of it (benchmarks/README.md).

The replacement does exactly what the original does (same events, same checks, same
join) but waits on the stop event itself, so it wakes the moment the run ends. It is
installed only on the release it was written against; on any other release Prefect's
own stays.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import prefect
from prefect import flow_engine

FIXED_RELEASE = "3.8.8"


@contextmanager
def prompt_heartbeats(engine: Any, join_on_exit: bool = True) -> Generator[None, None, None]:
    """``prefect.flow_engine._send_heartbeats``, stopping as soon as it is asked to."""
    heartbeat_seconds = engine.heartbeat_seconds
    if heartbeat_seconds is None:
        yield
        return
    heartbeat_seconds = max(heartbeat_seconds, flow_engine.MINIMUM_HEARTBEAT_INTERVAL)
    resource, related = engine._build_heartbeat_event_template()
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            state = engine.flow_run.state if engine.flow_run else None
            if state is not None and state.is_final():
                engine.logger.debug("Flow run in terminal state, stopping heartbeat")
                return
            try:
                engine._emit_flow_run_heartbeat(resource, related)
            except Exception:  # as in Prefect: a missed beat is logged, never raised
                engine.logger.debug("Failed to emit heartbeat", exc_info=True)
            if stop.wait(heartbeat_seconds):
                return

    # Same context as the caller (Prefect's reason: the settings' API URL; see its source).
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(beat,), daemon=True, name="bulkops-flow-heartbeat")
    thread.start()
    engine.logger.debug("Started flow run heartbeat context")
    try:
        yield
    finally:
        stop.set()
        if join_on_exit:
            thread.join(timeout=2)
        engine.logger.debug("Stopped flow run heartbeat context")


def install() -> bool:
    """Use :func:`prompt_heartbeats` in Prefect's flow engine; True if installed."""
    expected = ("_send_heartbeats", "MINIMUM_HEARTBEAT_INTERVAL")
    if prefect.__version__ != FIXED_RELEASE or not all(hasattr(flow_engine, name) for name in expected):
        return False
    flow_engine._send_heartbeats = prompt_heartbeats
    return True


INSTALLED = install()
