"""One operation across workers (``--split N``, flow parameter ``split``, default
``BULKOPS_SPLIT``), as Elasticsearch slices a reindex.

The operation's own run (the parent) plans its batches as always, then cuts the batch
list into N contiguous shares and starts one ``bulk-share`` run per share on the work
pool (the ``bulk-share`` deployment): any worker takes any share. A share's batches,
their kwargs and their global indices are a JSON document in the shared storage
(``operations/{parent}/shares/{n}.json``); the child maps the operation's own batch
task over them *as the parent* (the parent's operation id: the same claims, the same
export part files, the same audit manifest, the same stop flag), and writes each
batch's outcome to ``operations/{parent}/outcomes/{index}.json`` as it ends. The parent
counts those outcomes as it would count its own batches (progress, per-item errors,
the export's writer), reads the children's in-batch counts through Prefect
(``tasks.ticks``), and ends with one result. A cancel of the parent sets its stop flag,
which every child's batches read. A child that ends without the outcome of some of
its batches (its process was killed, its worker lost) is started again once for
those; after that, their items are reported ``batch_error`` (the parent's retry takes
them again).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import asdict, fields, is_dataclass
from datetime import datetime
from importlib import import_module
from typing import Any

from config import get_settings
from tasks.resources import store
from videolib.ids import RequestError
from videolib.operation import BatchOutcome

SHARE_FLOW = "bulk-share"
SHARE_DEPLOYMENT = "bulk-share/bulk-share"
MAX_SPLIT = 16
POLL_S = 1.0  # how often the parent looks for finished batches
STATE_EVERY_S = 5.0  # how often it asks Prefect how its children are
PICKUP_WARN_S = 120.0  # a share no worker took for this long is said in the run's log
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
# The batch task of each operation, by module and name (a child imports only its own).
BATCH_TASKS = {
    "delete": ("tasks.delete", "delete_video_batch"),
    "export": ("tasks.export", "read_export_batch"),
    "reprocess": ("tasks.reprocess", "reprocess_video_batch"),
    "restore": ("tasks.restore", "restore_video_batch"),
}


def share_key(parent_id: str, share: int) -> str:
    return f"operations/{parent_id}/shares/{share}.json"


def outcomes_prefix(parent_id: str) -> str:
    return f"operations/{parent_id}/outcomes"


def outcome_key(parent_id: str, index: int) -> str:
    return f"{outcomes_prefix(parent_id)}/{index:06d}.json"


def shares(batches: int, split: int) -> list[list[int]]:
    """The batch indices of each share: ``split`` contiguous runs, sizes within one."""
    split = max(1, min(split, batches))
    size, extra = divmod(batches, split)
    out, start = [], 0
    for n in range(split):
        end = start + size + (1 if n < extra else 0)
        out.append(list(range(start, end)))
        start = end
    return out


# ------------------------------------------------------------------ the share documents
# JSON, not pickle: a document in storage names data, never code to run.

def _codec_types() -> dict[str, type]:
    from videolib.export import ExportBatch, ExportFilter

    return {"ExportBatch": ExportBatch, "ExportFilter": ExportFilter}


def encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"__type__": "datetime", "iso": value.isoformat()}
    if is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if name not in _codec_types():
            raise TypeError(f"cannot put a {name} in a share document")
        return {"__type__": name, **{k: encode(v) for k, v in asdict(value).items()}}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot put a {type(value).__name__} in a share document")


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    kind = value.get("__type__")
    if kind == "datetime":
        return datetime.fromisoformat(value["iso"])
    if kind is not None:
        cls = _codec_types().get(kind)
        if cls is None:
            raise ValueError(f"a share document may hold data only, not a {str(kind)[:40]!r}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: decode(v) for k, v in value.items() if k in names})
    return {k: decode(v) for k, v in value.items()}


def write_share(parent_id: str, share: int, *, operation: str, indices: list[int], batches: list,
                task_kwargs: dict, in_flight: int | None = None) -> None:
    document = {"parent_id": parent_id, "share": share, "operation": operation, "indices": indices,
                "batches": encode([batches[i] for i in indices]), "task_kwargs": encode(task_kwargs),
                "in_flight": in_flight}
    store().put(share_key(parent_id, share), json.dumps(document).encode())


def read_share(parent_id: str, share: int) -> dict:
    document = json.loads(store().get(share_key(parent_id, share)))
    if document.get("parent_id") != parent_id or document.get("operation") not in BATCH_TASKS:
        raise ValueError(f"share {share} of {parent_id} is not a share document of that operation")
    document["batches"] = decode(document["batches"])
    document["task_kwargs"] = decode(document["task_kwargs"])
    return document


def batch_task(operation: str):
    module, name = BATCH_TASKS[operation]
    return getattr(import_module(module), name)


# ------------------------------------------------------------------ the parent's side

def check_split(split: int | None) -> int:
    """The number of shares asked for (``BULKOPS_SPLIT`` when unsaid); above one, the
    ``bulk-share`` deployment must exist (else ``no_runner``: nothing would run them)."""
    split = get_settings().split if split is None else split
    if not isinstance(split, int) or not 1 <= split <= MAX_SPLIT:
        raise RequestError("bad_split", f"`split` must be 1..{MAX_SPLIT}; got {str(split)[:20]!r}")
    if split > 1:
        from flows.runners import ready_deployment

        try:
            ready_deployment(SHARE_FLOW)
        except RequestError as exc:
            raise RequestError("no_runner", f"--split {split} runs its shares on the work pool's workers: "
                                            f"{exc.message}") from None
    return split


class Dispatch:
    """The parent's half: start the shares, count their batches as they end."""

    def __init__(self, op, plan, task_kwargs: dict, count, split: int):
        self.op, self.plan, self.count = op, plan, count
        self.parent = op.operation_id
        self.task_kwargs = task_kwargs
        self.shares = shares(len(plan.batches), split)
        self.children: dict[str, tuple[int, list[int], int]] = {}  # run id -> (share, its batches, attempt)
        self.counted: set[int] = set()
        self.started = time.monotonic()
        self.waiting_said: set[str] = set()

    def start(self) -> None:
        from prefect.deployments import run_deployment

        self.op.remote_batches = True  # their counts come through Prefect
        for n, indices in enumerate(self.shares):
            self._start(n, indices, run_deployment, attempt=1)
        self.op.logger.info("%s batches in %s shares for the pool's workers: runs %s", len(self.plan.batches),
                            len(self.shares), ", ".join(self.children))

    def collect(self, timeout: float | None = None) -> None:
        """Count the batches as their outcomes arrive, until all are counted (or
        ``timeout``: the rest are counted by the operation as not done)."""
        from prefect.deployments import run_deployment

        deadline = None if timeout is None else time.monotonic() + timeout
        next_state = time.monotonic() + STATE_EVERY_S
        while len(self.counted) < len(self.plan.batches):
            self._take_outcomes()
            if time.monotonic() >= next_state:
                next_state = time.monotonic() + STATE_EVERY_S
                self._check_children(run_deployment)
            if len(self.counted) >= len(self.plan.batches) or (deadline is not None and time.monotonic() > deadline):
                return
            time.sleep(POLL_S)

    def _start(self, n: int, indices: list[int], run_deployment, *, attempt: int) -> None:
        # The operation keeps BULKOPS_TASK_WORKERS batches in flight against the database
        # and storage however many shares run them: each share runs its part of that.
        in_flight = max(1, math.ceil(get_settings().task_workers / len(self.shares)))
        write_share(self.parent, n, operation=self.op.result.operation, indices=indices,
                    batches=self.plan.batches, task_kwargs=self.task_kwargs, in_flight=in_flight)
        child = run_deployment(SHARE_DEPLOYMENT, parameters={"parent_id": self.parent, "share": n}, timeout=0,
                               tags=[f"share-of:{self.parent}"])
        self.children[str(child.id)] = (n, indices, attempt)

    def _take_outcomes(self) -> None:
        keys = store().list_keys(outcomes_prefix(self.parent))
        for key in sorted(keys):
            try:
                index = int(key.rsplit("/", 1)[1].split(".")[0])
            except ValueError:
                continue
            if index in self.counted or not 0 <= index < len(self.plan.batches):
                continue
            raw = json.loads(store().get(key))
            if "batch_error" in raw:
                self.op.logger.error("batch %s failed after retries: %s", index, raw["batch_error"])
                outcome = BatchOutcome(errors=self.plan.failed_items(index, raw["batch_error"]))
            else:
                outcome = BatchOutcome.from_dict(raw)
            self.counted.add(index)
            self.count(index, outcome)

    def _check_children(self, run_deployment) -> None:
        from prefect import get_client
        from prefect.states import Cancelled

        stopped = self.op.stopped_by is not None or self.op.stop.requested(self.parent)
        with get_client(sync_client=True) as client:
            for child_id, (n, indices, attempt) in list(self.children.items()):
                state = client.read_flow_run(uuid.UUID(child_id)).state
                kind = state.type.value if state is not None else "SCHEDULED"
                if stopped and kind == "SCHEDULED":  # no worker took it yet: it never will need to
                    client.set_flow_run_state(uuid.UUID(child_id), Cancelled(message="its operation was stopped"),
                                              force=True)
                    kind = "CANCELLED"
                if kind not in FINAL:
                    if kind == "SCHEDULED" and child_id not in self.waiting_said and \
                            time.monotonic() - self.started > PICKUP_WARN_S:
                        self.waiting_said.add(child_id)
                        self.op.logger.warning("share %s (run %s) has waited %ss for a worker of the pool: are "
                                               "workers polling, with a free slot (this run may hold one)?", n,
                                               child_id, int(time.monotonic() - self.started))
                    continue
                self._take_outcomes()  # what it wrote before it ended
                missing = [i for i in indices if i not in self.counted]
                del self.children[child_id]
                if not missing:
                    continue
                if not stopped and attempt == 1:
                    self.op.logger.warning("share %s (run %s) ended %s without %s of its batches: starting them "
                                           "again", n, child_id, state.name if state else kind, len(missing))
                    self.shares.append(missing)
                    self._start(len(self.shares) - 1, missing, run_deployment, attempt=2)
                    continue
                for index in missing:  # stopped: not done; lost twice: failed (the retry takes them)
                    self.counted.add(index)
                    if stopped:
                        self.count(index, BatchOutcome(skipped=self.plan.sizes[index]))
                    else:
                        detail = f"its share ran twice and ended {kind.lower()} both times"
                        self.count(index, BatchOutcome(errors=self.plan.failed_items(index, detail)))

    def clear(self) -> None:
        try:
            keys = store().list_keys(f"operations/{self.parent}/shares") + store().list_keys(
                outcomes_prefix(self.parent))
            if keys:
                store().delete_many(keys)
        except Exception as exc:  # noqa: BLE001 - leftovers, not the work
            self.op.logger.warning("could not remove the share documents of %s: %s", self.parent, exc)
