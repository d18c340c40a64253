"""Downloads of exports: the link an export's result gives, followed as a user's browser
does. Local storage: ``GET /downloads/{token}`` with Range and the file's name; expired
410, altered or malformed 403, a file that is gone 404. S3: the link is a presigned URL of
the (loopback) S3 endpoint itself."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _export(creator: str = "creator-001", fmt: str = "csv") -> dict:
    from service.launch import run
    from service.requests import ExportRequest

    return run(ExportRequest.build(creator_id=creator, format=fmt))


def _path(url: str) -> str:
    return url[url.index("/downloads/"):]


def test_the_link_of_a_local_export_downloads_the_file_with_range(api):
    api.lib.seed(30, creators=1)
    document = _export()
    output = document["output"]
    assert output["url"].startswith("http://127.0.0.1:8000/downloads/")
    data = (api.lib.data_dir.parent / "storage" / output["path"]).read_bytes()
    whole = api.get(_path(output["url"]))
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"].startswith("text/csv")
    assert f'filename="{output["path"].rsplit("/", 1)[1]}"' in whole.headers["content-disposition"]
    assert whole.headers["accept-ranges"] == "bytes"
    part = api.get(_path(output["url"]), headers={"Range": "bytes=10-109"})
    assert part.status_code == 206 and part.content == data[10:110]
    assert part.headers["content-range"] == f"bytes 10-109/{len(data)}"
    parquet = _export(fmt="parquet")["output"]
    answer = api.get(_path(parquet["url"]))
    assert answer.status_code == 200 and answer.content[:4] == b"PAR1"


def test_expired_altered_malformed_and_gone_links_are_refused(api):
    from config import get_settings
    from videolib.signing import sign_token

    api.lib.seed(10, creators=1)
    output = _export()["output"]
    token = _path(output["url"]).split("/")[-1]
    secret = get_settings().signing_key_bytes()
    expired, _ = sign_token(output["path"], secret=secret, expires_in_s=60, now=0)
    answer = api.get(f"/downloads/{expired}")
    assert answer.status_code == 410 and answer.json()["error"] == "link_expired"
    payload, mac = token.split(".")
    for bad in (f"{payload}.{mac[:-2]}AA", f"{payload[:-3]}xyz.{mac}", "abc", "a.b", "..", "%2e%2e%2fetc",
                "x" * 5000, f"{payload}.{mac}.{mac}"):
        answer = api.get(f"/downloads/{bad}")
        assert answer.status_code in (403, 404), (bad[:40], answer.status_code)
        assert answer.json()["error"] in ("link_invalid", "not_found")
    # A token signed for something that is not an export (a report, a path outside).
    other, _ = sign_token("reports/x.csv", secret=secret)
    assert api.get(f"/downloads/{other}").json()["error"] == "link_invalid"
    forged, _ = sign_token(output["path"], secret=b"not-the-key")
    assert api.get(f"/downloads/{forged}").status_code == 403
    # The file is gone: 404, named as such.
    (api.lib.data_dir.parent / "storage" / output["path"]).unlink()
    answer = api.get(f"/downloads/{token}")
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"


@pytest.mark.s3
def test_an_s3_export_link_is_a_working_presigned_url(s3_library, monkeypatch):
    from fastapi.testclient import TestClient

    from api import create_app

    s3_library.seed(10, creators=1)
    output = _export()["output"]
    assert "/downloads/" not in output["url"] and "Signature" in output["url"]
    answer = requests.get(output["url"], timeout=30)
    assert answer.status_code == 200 and answer.content == s3_library.store.get(output["path"])
    # The API's own route does not serve S3 keys.
    client = TestClient(create_app(), raise_server_exceptions=False)
    from config import get_settings
    from videolib.signing import sign_token

    token, _ = sign_token(output["path"], secret=get_settings().signing_key_bytes())
    assert client.get(f"/downloads/{token}").status_code == 403
