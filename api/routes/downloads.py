"""``GET /downloads/{token}``: an export in local storage, while its signed link is
valid, with ``Range`` and the file's name. The link is the credential (no bearer token):
it names one file and expires."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.errors import error_responses

router = APIRouter(tags=["downloads"])


@router.get("/downloads/{token}", response_class=FileResponse, responses=error_responses(403, 404, 410),
            summary="Download an export (local storage) by its signed link")
def download(token: str) -> FileResponse:
    from service.downloads import open_download

    path, name, media_type = open_download(token)
    return FileResponse(path, media_type=media_type, filename=name,
                        headers={"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"})
