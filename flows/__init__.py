"""Prefect flows, one per file; the operation object they all run on is ``flows/operation.py``.

``FLOWS`` finds a flow by its Prefect name without importing the others (each import
costs the flow's dependencies).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def _loader(module: str, name: str) -> Callable[[], Any]:
    return lambda: getattr(import_module(module), name)


FLOWS: dict[str, Callable[[], Any]] = {
    "bulk-delete": _loader("flows.bulk_delete", "bulk_delete"),
    "bulk-export": _loader("flows.bulk_export", "bulk_export"),
    "bulk-reprocess": _loader("flows.bulk_reprocess", "bulk_reprocess"),
    "cleanup": _loader("flows.cleanup", "cleanup"),
    "bulk-restore": _loader("flows.bulk_restore", "bulk_restore"),
    # The child runs of a split operation (flows/split.py): not an operation of its own.
    "bulk-share": _loader("flows.bulk_share", "bulk_share"),
}
CLEANUP = "cleanup"  # the flow (and operation) of the whole library, one run at a time
# Which operation each flow runs (its result document's `operation`).
FLOW_OPERATIONS = {"bulk-delete": "delete", "bulk-export": "export", "bulk-reprocess": "reprocess",
                   "cleanup": "cleanup", "bulk-restore": "restore"}

# Every operation's run carries its creator as a tag, so that one creator's runs can be
# listed from Prefect (``service.listing``); set when the run is created, and by the flow
# itself for runs started elsewhere (the Prefect UI).
CREATOR_TAG_PREFIX = "creator:"


def creator_tag(creator_id: str) -> str:
    return f"{CREATOR_TAG_PREFIX}{creator_id}"
