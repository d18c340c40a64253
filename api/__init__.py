"""The HTTP API: a thin FastAPI app over ``service/`` (auth, limits, transport; every
rule lives in ``service/`` and below). ``bulkops serve`` runs it on uvicorn beside a
runner that executes the deployments and, when needed, a Prefect server.

    from api import create_app
    app = create_app()
"""

from api.app import create_app

__all__ = ["create_app"]
