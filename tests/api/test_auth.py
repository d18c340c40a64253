"""Who may call the API: every way a bearer token can be wrong is 401 with
``WWW-Authenticate``; a creator token acts for its creator only (403 naming another);
a service token must name the creator (422 ``creator_required``); oversize bodies are
413 before anything else; bodies that do not parse are 422 ``usage``. No Prefect run is
needed for any of these: each is refused before one would start."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from tests.api.conftest import SECRET

ROUTES = [("post", "/bulk/delete"), ("post", "/bulk/export"), ("post", "/bulk/reprocess"),
          ("get", "/bulk/status/0b0b0b0b-0000-4000-8000-000000000000"),
          ("post", "/bulk/0b0b0b0b-0000-4000-8000-000000000000/cancel")]


def _call(api, method: str, path: str, headers: dict | None = None):
    if method == "post":
        return api.post(path, json={}, headers=headers)
    return api.get(path, headers=headers)


def _b64(part: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def _bad_tokens() -> dict[str, str]:
    now = int(time.time())
    good = {"sub": "creator-001", "exp": now + 600}
    return {
        "expired": jwt.encode({"sub": "creator-001", "exp": now - 5}, SECRET, algorithm="HS256"),
        "wrong secret": jwt.encode(good, "another-secret-another-secret-0123456789", algorithm="HS256"),
        "no exp": jwt.encode({"sub": "creator-001"}, SECRET, algorithm="HS256"),
        "no sub": jwt.encode({"exp": now + 600}, SECRET, algorithm="HS256"),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(good)}.",
        "HS512": jwt.encode(good, SECRET * 2, algorithm="HS512"),
        "sub not a creator id": jwt.encode({"sub": "../etc'; DROP TABLE videos;--", "exp": now + 600}, SECRET,
                                           algorithm="HS256"),
        "sub not text": jwt.encode({"sub": 42, "exp": now + 600}, SECRET, algorithm="HS256"),
        "unknown role": jwt.encode({**good, "role": "admin"}, SECRET, algorithm="HS256"),
        "garbage": "not.a.token",
        "one part": "abc",
        "tampered payload": (lambda t: t.split(".")[0] + "." + _b64({"sub": "creator-002", "exp": now + 600}) + "."
                             + t.split(".")[2])(jwt.encode(good, SECRET, algorithm="HS256")),
    }


@pytest.mark.parametrize("method,path", ROUTES)
def test_no_token_is_401_with_www_authenticate(api, method, path):
    answer = _call(api, method, path)
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthorized"
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("case", sorted(_bad_tokens()))
def test_every_bad_token_is_401(api, case):
    token = _bad_tokens()[case]
    for method, path in ROUTES:
        answer = _call(api, method, path, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 401, (case, path, answer.text)
        assert answer.json()["error"] == "unauthorized"
        assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]


@pytest.mark.parametrize("header", ["Basic Y3JlYXRvcjpwdw==", "Bearer", "Bearer ", "Token abc", "bearer"])
def test_a_malformed_authorization_header_is_401(api, header):
    answer = api.get(ROUTES[3][1], headers={"Authorization": header})
    assert answer.status_code == 401 and answer.json()["error"] == "unauthorized"


def test_a_creator_token_naming_another_creator_is_403_and_touches_nothing(api):
    api.lib.seed(10, creators=2)
    before = api.lib.ids("creator-002")
    answer = api.post("/bulk/delete", json={"creator_id": "creator-002", "video_ids": before},
                      headers=api.bearer("creator-001"))
    assert answer.status_code == 403 and answer.json()["error"] == "forbidden"
    assert api.lib.ids("creator-002") == before


def test_a_service_token_must_name_the_creator(api):
    answer = api.post("/bulk/export", json={"format": "csv"}, headers=api.bearer("backend", service=True))
    assert answer.status_code == 422 and answer.json()["error"] == "creator_required"
    bad = api.post("/bulk/export", json={"format": "csv", "creator_id": "bad creator/../"},
                   headers=api.bearer("backend", service=True))
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_creator"


def test_an_oversize_body_is_413_before_auth_or_parsing(api, monkeypatch):
    from config import get_settings

    monkeypatch.setenv("BULKOPS_MAX_BODY_BYTES", "1KiB")
    get_settings.cache_clear()
    big = json.dumps({"video_ids": ["x" * 36] * 100})
    answer = api.post("/bulk/delete", content=big, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["error"] == "body_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b" " * 200

    streamed = api.post("/bulk/delete", content=chunks(), headers={**api.bearer(), "Content-Type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["error"] == "body_too_large"
    small = api.post("/bulk/delete", json={"all": True, "bogus": 1}, headers=api.bearer())
    assert small.status_code == 422


@pytest.mark.parametrize("body", [
    b"{not json", b"[]", b'"text"', b'{"video_ids": "abc"}', b'{"all": "maybe"}', b'{"unknown_option": 1}',
    b'{"batch_size": 0}', b'{"batch_size": 100001}', b'{"dry_run": [1]}',
])
def test_a_body_that_does_not_parse_is_422_usage(api, body):
    answer = api.post("/bulk/delete", content=body, headers={**api.bearer(), "Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "usage" and answer.json()["message"]


def test_malformed_operation_ids_are_404_never_500(api):
    for bad in ["abc", "0" * 500, "'; DROP TABLE videos; --", "..%2F..%2Fetc%2Fpasswd", "%00"]:
        for path in (f"/bulk/status/{bad}", f"/bulk/{bad}/cancel"):
            answer = (api.get if "status" in path else api.post)(path, headers=api.bearer())
            assert answer.status_code == 404, (path, answer.text)
            assert answer.json()["error"] == "not_found"


def test_health_and_the_openapi_document(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    spec = api.get("/openapi.json").json()
    for path in ("/bulk/delete", "/bulk/export", "/bulk/reprocess", "/bulk/status/{operation_id}",
                 "/bulk/{operation_id}/cancel", "/healthz", "/readyz"):
        assert path in spec["paths"], path
    trigger = spec["paths"]["/bulk/delete"]["post"]["responses"]
    assert {"202", "401", "403", "413", "422", "429", "503"} <= set(trigger)
    assert "error" in trigger["422"]["content"]["application/json"]["schema"]["properties"]
    assert api.get("/docs").status_code == 200


def test_tokens_round_trip_and_refuse_what_they_must():
    from service.tokens import issue_token, verify_token
    from videolib.ids import RequestError

    with pytest.MonkeyPatch.context() as mp:
        from config import get_settings

        mp.delenv("BULKOPS_JWT_SECRET", raising=False)
        get_settings.cache_clear()
        with pytest.raises(RequestError) as unset:
            issue_token("creator-001")
        assert unset.value.code == "bad_settings" and "BULKOPS_JWT_SECRET" in unset.value.message
        mp.setenv("BULKOPS_JWT_SECRET", SECRET)
        get_settings.cache_clear()
        who = verify_token(issue_token("creator-001", ttl_s=60))
        assert (who.subject, who.service) == ("creator-001", False)
        assert verify_token(issue_token("backend", service=True)).service is True
        for ttl in (0, -1, 400 * 86400):
            with pytest.raises(RequestError):
                issue_token("creator-001", ttl_s=ttl)
        with pytest.raises(RequestError) as bad:
            issue_token("bad id")
        assert bad.value.code == "invalid_creator"
    get_settings.cache_clear()
