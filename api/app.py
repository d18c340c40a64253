"""The FastAPI application: routers, error handlers, the body limit."""

from __future__ import annotations

from fastapi import FastAPI

from api import errors
from api.deps import BodyLimit
from api.routes import bulk, downloads, health


def create_app() -> FastAPI:
    app = FastAPI(
        title="bulkops",
        version="0.1.0",
        description=("Bulk delete, export and reprocess of a video library, run as Prefect flow runs. "
                     "Authenticate with `Authorization: Bearer <token>` (`bulkops token`). Errors are "
                     "`{\"error\", \"message\"}` with the codes of CONTRACT.md."),
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(bulk.router)
    app.include_router(downloads.router)
    app.add_middleware(BodyLimit, exempt=("/bulk/manifests",))
    return app
