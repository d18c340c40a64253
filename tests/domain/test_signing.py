"""Expiring download links: HMAC tokens for local files, presigned URLs on S3."""

from __future__ import annotations

import time
import urllib.request

import pytest

from videolib.signing import LinkError, sign_token, signed_link, verify_token

SECRET = b"k" * 32


def test_token_round_trip_until_expiry():
    token, expires = sign_token("exports/c1/op.csv", secret=SECRET, expires_in_s=60, now=1000)
    assert expires == 1060
    assert verify_token(token, secret=SECRET, now=1059) == "exports/c1/op.csv"
    with pytest.raises(LinkError) as info:
        verify_token(token, secret=SECRET, now=1060)
    assert info.value.reason == "expired"


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-2] + ("AA" if t[-2:] != "AA" else "BB"),      # signature changed
    lambda t: "x" + t,                                          # payload changed
    lambda t: t.replace(".", ""),                               # no separator
    lambda t: t + ".x",                                         # extra part
    lambda t: "",
    lambda t: "%%%.%%%",
])
def test_tampered_tokens_are_refused(mangle):
    token, _ = sign_token("exports/c1/op.csv", secret=SECRET)
    with pytest.raises(LinkError) as info:
        verify_token(mangle(token), secret=SECRET)
    assert info.value.reason == "invalid"


def test_token_from_another_key_is_refused():
    token, _ = sign_token("exports/c1/op.csv", secret=SECRET)
    with pytest.raises(LinkError):
        verify_token(token, secret=b"other-secret")


def test_forged_payload_for_another_path_is_refused():
    import base64
    import json

    token, _ = sign_token("exports/c1/op.csv", secret=SECRET)
    _, mac = token.split(".")
    forged = base64.urlsafe_b64encode(json.dumps({"k": "exports/c2/x.csv", "e": 9e12}).encode()).rstrip(b"=").decode()
    with pytest.raises(LinkError):
        verify_token(f"{forged}.{mac}", secret=SECRET)


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a//b"])
def test_unsafe_keys_cannot_be_signed(key):
    with pytest.raises(ValueError):
        sign_token(key, secret=SECRET)


@pytest.mark.parametrize("expiry", [0, -1, 7 * 24 * 3600 + 1])
def test_expiry_bounds(expiry):
    with pytest.raises(ValueError, match="expires_in_s"):
        sign_token("a/b", secret=SECRET, expires_in_s=expiry)


def test_local_link(sqlite_library):
    store = sqlite_library.store
    store.put("exports/c1/x.csv", b"a,b\r\n")
    link = signed_link(store, "exports/c1/x.csv", secret=SECRET, base_url="http://h:1/")
    assert link.url.startswith("http://h:1/downloads/")
    assert verify_token(link.url.rsplit("/", 1)[1], secret=SECRET) == "exports/c1/x.csv"
    assert abs(link.expires_at.timestamp() - (time.time() + 86400)) < 5


def test_s3_presigned_link_downloads_with_a_plain_client(s3_library):
    store = s3_library.store
    body = "id,title\r\n1,\"héllo, \"\"world\"\"\"\r\n".encode()
    store.put("exports/c1/x.csv", body)
    link = signed_link(store, "exports/c1/x.csv", secret=SECRET, expires_in_s=600)
    assert "X-Amz-Signature=" in link.url or "Signature=" in link.url
    with urllib.request.urlopen(link.url, timeout=10) as response:
        assert response.read() == body
