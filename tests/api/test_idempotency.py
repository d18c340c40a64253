"""``Idempotency-Key`` as the service keeps it (a real local store): the first answer
comes back for the same key and body within 24 h, another body is a conflict, keys are
per creator, and racing requests with one key make one answer. (Over HTTP with a real
runner: tests/e2e/test_serve.py.)"""

from __future__ import annotations

import threading
import time

import pytest

from service.idempotency import WINDOW_S, fingerprint, idempotent
from videolib.ids import RequestError


def test_the_first_answer_comes_back_and_another_body_conflicts(sqlite_library):
    body = fingerprint("/bulk/delete", {"video_ids": ["a", "b"]})
    with idempotent("creator-001", "key-1", body) as memo:
        assert memo.answer is None
        memo.answer = {"operation_id": "first"}
    with idempotent("creator-001", "key-1", body) as memo:
        assert memo.answer == {"operation_id": "first"}
    with pytest.raises(RequestError) as conflict:
        with idempotent("creator-001", "key-1", fingerprint("/bulk/delete", {"video_ids": ["a"]})):
            pass
    assert conflict.value.code == "idempotency_conflict"
    with pytest.raises(RequestError):  # the same body on another route is another request
        with idempotent("creator-001", "key-1", fingerprint("/bulk/reprocess", {"video_ids": ["a", "b"]})):
            pass
    with idempotent("creator-002", "key-1", body) as memo:  # per creator
        assert memo.answer is None
    with idempotent("creator-001", "key-1", body, now=time.time() + WINDOW_S + 1) as memo:  # after 24 h: new
        assert memo.answer is None


def test_a_failed_request_keeps_nothing_and_bad_keys_are_refused(sqlite_library):
    body = fingerprint("/bulk/export", {"format": "xml"})
    with pytest.raises(RequestError):
        with idempotent("creator-001", "k", body) as memo:
            raise RequestError("unknown_format", "no")
    with idempotent("creator-001", "k", body) as memo:
        assert memo.answer is None
    for bad in ("", "x" * 256, "tab\there", "new\nline"):
        with pytest.raises(RequestError) as refused:
            with idempotent("creator-001", bad, body):
                pass
        assert refused.value.code == "usage"


def test_racing_requests_with_one_key_start_one_operation(sqlite_library):
    body = fingerprint("/bulk/delete", {"all": True})
    started, answers = [], []

    def request():
        with idempotent("creator-001", "race", body) as memo:
            if memo.answer is None:
                time.sleep(0.05)  # the run being created
                started.append(1)
                memo.answer = {"operation_id": f"run-{len(started)}"}
            answers.append(memo.answer["operation_id"])

    threads = [threading.Thread(target=request) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(started) == 1 and answers == ["run-1"] * 20
