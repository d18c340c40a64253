"""The API in-process (FastAPI's TestClient over the real app), with a real library and
tokens signed by the configured secret."""

from __future__ import annotations

import pytest

SECRET = "test-secret-for-the-bulkops-api-0123456789"


@pytest.fixture
def api(sqlite_library, monkeypatch):
    """A client of the real app on a SQLite library; ``api.bearer(creator)`` is an Authorization header."""
    from fastapi.testclient import TestClient

    from api import create_app
    from config import get_settings

    monkeypatch.setenv("BULKOPS_JWT_SECRET", SECRET)
    get_settings.cache_clear()
    client = TestClient(create_app(), raise_server_exceptions=False)
    client.lib = sqlite_library
    # (not `auth`: httpx would call it on every request)
    client.bearer = lambda creator="creator-001", service=False: {"Authorization": f"Bearer {_token(creator, service)}"}
    yield client
    get_settings.cache_clear()


def _token(creator: str = "creator-001", service: bool = False, **kwargs) -> str:
    from service.tokens import issue_token

    return issue_token(creator, service=service, **kwargs)
