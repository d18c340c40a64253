"""The CLI's side of handing a run to a ``bulkops serve`` on this machine
(``service/inline.py``): without importing Prefect, POST the request to serve's API with
the service token serve left in ``.data/serve.json``, follow the run over Server-Sent
Events, and return its result document, as :func:`service.launch.run` would.

Used only when that serve executes runs (it has a runner), serves this very library
(the same database and storage settings: :func:`library_fingerprint`), and the CLI names
no other Prefect server. If serve cannot be reached before the run starts, the CLI runs
it itself as always.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

from config import get_settings
from videolib.ids import RequestError

# service.status.FINAL, without importing Prefect (which service.status does)
FINAL = {"completed", "partial", "failed", "cancelled"}
RECONNECTS = 5


class Unreachable(Exception):
    """serve did not answer before the run started: the CLI runs it itself."""


def library_fingerprint() -> str:
    """Which library a process works on (database, storage, endpoint), as a short digest;
    relative SQLite and storage paths are taken from the working directory."""
    from pathlib import Path

    settings = get_settings()
    database, storage = settings.database_url, str(settings.storage_url)
    if database.startswith("sqlite:///") and not database.startswith("sqlite:////"):
        database = "sqlite:///" + str(Path(database[len("sqlite:///"):]).resolve())
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    key = "\n".join([database, storage, str(settings.s3_endpoint_url or "")])
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def serve_for_cli() -> dict[str, Any] | None:
    """The running serve this CLI may hand its runs to, or None."""
    from service.environment import running_serve

    served = running_serve()
    if not served or not served.get("token") or not served.get("local_api_url"):
        return None
    named = os.environ.get("PREFECT_API_URL")
    if named and named.rstrip("/") != str(served.get("prefect_api_url", "")).rstrip("/"):
        return None  # this CLI names another Prefect server
    if served.get("library") != library_fingerprint():
        return None  # serve works on another library
    return served


def request_body(request) -> tuple[str, dict[str, Any]]:
    """The route and JSON body of an operation request (``service.requests``)."""
    body = request.model_dump(mode="json", exclude_none=True)
    body.pop("retry_of", None)
    if body.pop("all_videos", False):
        body["all"] = True
    return f"/bulk/{request.operation}", body


class Remote:
    """One serve's API, as the CLI uses it."""

    def __init__(self, served: dict[str, Any]):
        import httpx

        from service.inline import HEADER

        self.base = served["local_api_url"].rstrip("/")
        self.headers = {"Authorization": f"Bearer {served['token']}", HEADER: "1"}
        self.client = httpx.Client(timeout=httpx.Timeout(60.0, read=None))

    def start(self, request) -> str:
        """POST the request; its operation id. Refusals raise ``RequestError`` with the
        API's code (the CLI's exit 2); no answer raises :class:`Unreachable`."""
        import httpx

        path, body = request_body(request)
        try:
            answer = self.client.post(f"{self.base}{path}", json=body, headers=self.headers)
        except httpx.TransportError as exc:
            raise Unreachable(str(exc)) from exc
        if answer.status_code == 202:
            return answer.json()["operation_id"]
        try:
            error = answer.json()
        except ValueError:
            error = {}
        if answer.status_code in (401, 403) or "error" not in error:
            raise Unreachable(f"serve answered {answer.status_code}")  # e.g. its secret changed since
        extra = {k: v for k, v in error.items() if k not in ("error", "message")}
        raise RequestError(error["error"], error.get("message", ""), **extra)

    def follow(self, operation_id: str, on_document: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Each status document as it changes, until the final one; that document."""
        import httpx

        last_id, failures = None, 0
        while True:
            headers = dict(self.headers, **({"Last-Event-ID": last_id} if last_id else {}))
            try:
                with self.client.stream("GET", f"{self.base}/bulk/{operation_id}/events", headers=headers) as stream:
                    stream.raise_for_status()
                    for line in stream.iter_lines():
                        if line.startswith("id: "):
                            last_id = line[4:]
                        elif line.startswith("data: "):
                            document = json.loads(line[6:])
                            on_document(document)
                            if document["status"] in FINAL and document.get("result") is not None:
                                return document
                failures = 0
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                failures += 1
                if failures > RECONNECTS:
                    raise RequestError("prefect_unreachable", f"lost bulkops serve at {self.base} while following "
                                       f"operation {operation_id} ({exc}); it goes on: bulkops status "
                                       f"{operation_id} --watch") from exc
                time.sleep(min(2.0 * failures, 10.0))

    def cancel(self, operation_id: str) -> None:
        import httpx

        try:
            self.client.post(f"{self.base}/bulk/{operation_id}/cancel", headers=self.headers)
        except httpx.TransportError:
            pass

    def close(self) -> None:
        self.client.close()
