"""Webhooks of finished operations, received by a real HTTP server on loopback and
verified with the ``standardwebhooks`` package: the flow's own attempt, a receiver that
fails twice before it takes it (the sweep retries with backoff, the same webhook-id), a
run that ended without sending, a receiver that never answers well (the operation's
state never changes), and settings that do not validate."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytestmark = pytest.mark.usefixtures("prefect_harness")

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Receiver:
    def __init__(self, fail_first: int = 0, status: int = 200):
        self.received: list[tuple[dict, dict]] = []
        self.fail_first, self.status = fail_first, status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append((dict(self.headers), json.loads(body)))
                receiver.raw.append(body)
                # The first message it meets fails `fail_first` times; the others go through.
                first = receiver.received[0][0]["webhook-id"]
                failing = (self.headers["webhook-id"] == first and
                           sum(1 for h, _b in receiver.received if h["webhook-id"] == first) <= receiver.fail_first)
                self.send_response(500 if failing else receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.raw: list[bytes] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/bulkops"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def verified(self) -> list[dict]:
        from standardwebhooks.webhooks import Webhook

        hook = Webhook(SECRET)
        return [hook.verify(raw, {k.lower(): v for k, v in headers.items()})
                for (headers, _body), raw in zip(self.received, self.raw)]

    def close(self):
        self.server.shutdown()


@pytest.fixture
def hooks(sqlite_library, monkeypatch):
    from config import get_settings

    made = []

    def configure(**kwargs):
        receiver = Receiver(**kwargs)
        made.append(receiver)
        monkeypatch.setenv("BULKOPS_WEBHOOK_URL", receiver.url)
        monkeypatch.setenv("BULKOPS_WEBHOOK_SECRET", SECRET)
        get_settings.cache_clear()
        return receiver

    yield configure
    for receiver in made:
        receiver.close()
    get_settings.cache_clear()


def _delete(lib, count=2):
    from service.launch import run
    from service.requests import DeleteRequest

    return run(DeleteRequest.build(creator_id="creator-001", video_ids=lib.ids("creator-001")[:count]))


def test_the_flow_sends_its_result_signed_and_the_status_says_so(sqlite_library, hooks):
    from service.status import status_of

    receiver = hooks()
    sqlite_library.seed(10, creators=1)
    document = _delete(sqlite_library)
    [payload] = receiver.verified()  # raises if the signature does not verify
    assert payload == document or {k: payload[k] for k in document} == document
    headers = {k.lower(): v for k, v in receiver.received[0][0].items()}
    assert headers["webhook-id"] == f"msg_{document['operation_id']}"
    assert abs(int(headers["webhook-timestamp"]) - datetime.now(UTC).timestamp()) < 60
    status = status_of(document["operation_id"])
    assert status["webhook"] == {"attempts": 1, "last_status": 200, "delivered": True}


def test_a_receiver_that_fails_twice_gets_it_on_the_third_attempt(sqlite_library, hooks):
    from service.status import status_of
    from service.webhooks import BACKOFF_S, sweep

    receiver = hooks(fail_first=2)
    sqlite_library.seed(10, creators=1)
    document = _delete(sqlite_library)
    assert status_of(document["operation_id"])["status"] == "completed", "a failed delivery changes nothing"
    assert status_of(document["operation_id"])["webhook"] == {"attempts": 1, "last_status": 500, "delivered": False}
    mine = f"msg_{document['operation_id']}"

    def attempts() -> int:  # (the session's other runs may be swept to this receiver too)
        return sum(1 for headers, _b in receiver.received if headers["webhook-id"] == mine)

    sweep()
    assert attempts() == 1, "not before its backoff"
    later = datetime.now(UTC) + timedelta(seconds=BACKOFF_S[0] + 1)
    sweep(now=later)
    assert attempts() == 2
    sweep(now=later + timedelta(seconds=BACKOFF_S[1] + 1))
    assert attempts() == 3
    sweep(now=later + timedelta(hours=2))
    assert attempts() == 3, "delivered: never again"
    receiver.verified()  # every one verifies
    assert status_of(document["operation_id"])["webhook"] == {"attempts": 3, "last_status": 200, "delivered": True}


def test_a_run_that_ended_without_sending_gets_one_and_old_runs_do_not(sqlite_library, hooks, monkeypatch):
    from config import get_settings
    from service.webhooks import sweep

    sqlite_library.seed(10, creators=1)
    document = _delete(sqlite_library)  # no webhook configured yet: nothing sent
    receiver = hooks()
    sweep(now=datetime.now(UTC) + timedelta(days=2))
    assert receiver.received == [], "past the retry window"
    assert sweep()["tried"] >= 1
    assert document["operation_id"] in {body["operation_id"] for _h, body in receiver.received}
    monkeypatch.setenv("BULKOPS_WEBHOOK_RETRY_WINDOW", "1h")
    get_settings.cache_clear()
    assert get_settings().webhook_retry_window == 3600


def test_an_unreachable_receiver_never_changes_the_operation(sqlite_library, hooks, monkeypatch):
    from config import get_settings
    from service.status import status_of
    from tests.servers import free_port

    hooks()
    monkeypatch.setenv("BULKOPS_WEBHOOK_URL", f"http://127.0.0.1:{free_port()}/nobody")
    get_settings.cache_clear()
    sqlite_library.seed(10, creators=1)
    document = _delete(sqlite_library)
    status = status_of(document["operation_id"])
    assert status["status"] == "completed"
    assert status["webhook"] == {"attempts": 1, "last_status": None, "delivered": False}


@pytest.mark.parametrize("name,value", [("BULKOPS_WEBHOOK_SECRET", "not-whsec"),
                                        ("BULKOPS_WEBHOOK_URL", "ftp://example/hook")])
def test_webhook_settings_that_do_not_validate_are_bad_settings(sqlite_library, monkeypatch, name, value):
    from config import get_settings
    from service.environment import as_refusal

    monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    with pytest.raises(Exception) as raised:
        get_settings()
    refusal = as_refusal(raised.value)
    assert refusal is not None and refusal.code == "bad_settings" and name in refusal.message
    monkeypatch.delenv(name)
    get_settings.cache_clear()
