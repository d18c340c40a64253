"""Liveness and readiness. ``/healthz``: the process answers. ``/readyz``: the database,
the storage and the Prefect server answer now (each check bounded), else 503 naming
which did not."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.errors import error_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _database() -> None:
    from sqlalchemy import text

    from service.environment import database

    with database().connect() as conn:
        conn.execute(text("SELECT 1"))


def _storage() -> None:
    from service.environment import ready_store

    ready_store()


def _prefect() -> None:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise problem


CHECKS = {"database": _database, "storage": _storage, "prefect": _prefect}


@router.get("/readyz", summary="The database, the storage and Prefect answer", responses=error_responses(503))
def readyz() -> Any:
    checks: dict[str, str] = {}
    for name, check in CHECKS.items():
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported per dependency
            refusal = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            checks[name] = str(refusal)[:300]
    if all(value == "ok" for value in checks.values()):
        return {"status": "ready", "checks": checks}
    failing = ", ".join(name for name, value in checks.items() if value != "ok")
    return JSONResponse({"error": "not_ready", "message": f"not ready: {failing} did not answer",
                         "checks": checks}, status_code=503)
