"""The request and result model shared by every operation: ids, batches, counting."""

from __future__ import annotations

import csv
import io
import json
import uuid

import pytest

from videolib.ids import (
    RequestError,
    check_creator_id,
    is_valid_creator_id,
    normalize_video_id,
)
from videolib.operation import (
    BatchOutcome,
    ItemError,
    OperationResult,
    decide_status,
    effective_batch_size,
    parse_video_ids,
    plan_batches,
)
from videolib.report import guard_formula, render_error_report

GOOD = "3f2c1a9e-8b7d-4c6e-9f01-23456789abcd"


@pytest.mark.parametrize(
    "raw, expected",
    [
        (GOOD, GOOD),
        (GOOD.upper(), GOOD),
        (f"  {GOOD}\t", GOOD),
        (GOOD.replace("-", ""), None),
        ("{" + GOOD + "}", None),
        ("urn:uuid:" + GOOD, None),
        (GOOD + "0", None),
        (GOOD[:-1] + "g", None),
        ("", None),
        ("' OR 1=1 --", None),
        ("../../etc/passwd", None),
        ("3f2c1a9e-8b7d-4c6e-9f01-23456789abc\u0434", None),
        (12345, None),
        (None, None),
        (["x"], None),
    ],
)
def test_normalize_video_id(raw, expected):
    assert normalize_video_id(raw) == expected


@pytest.mark.parametrize("creator", ["creator-001", "a", "user_42", "team.a@b", "x" * 64])
def test_valid_creator_ids(creator):
    assert check_creator_id(creator) == creator


@pytest.mark.parametrize(
    "creator", ["", "x" * 65, "../x", "a/b", "a..b", ".hidden", "-flag", "a b", "a\nb", "c'; DROP TABLE videos;--",
                "é", None, 7]
)
def test_invalid_creator_ids(creator):
    assert not is_valid_creator_id(creator)
    with pytest.raises(RequestError) as info:
        check_creator_id(creator)
    assert info.value.code == "invalid_creator"


def test_parse_ids_collapses_duplicates_and_echoes_malformed_as_given():
    other = str(uuid.uuid4())
    parsed = parse_video_ids([GOOD, GOOD.upper(), other, "bad", "bad", " =1+1", GOOD], max_ids=10)
    assert parsed.ids == [GOOD, other]
    assert [(e.video_id, e.error) for e in parsed.errors] == [("bad", "invalid_id"), (" =1+1", "invalid_id")]
    assert parsed.requested == 4


@pytest.mark.parametrize("ids, code", [([], "empty_selection"), (None, "empty_selection"),
                                       ([GOOD] * 11, "too_many_ids")])
def test_parse_ids_refuses_whole_request(ids, code):
    with pytest.raises(RequestError) as info:
        parse_video_ids(ids, max_ids=10)
    assert info.value.code == code and info.value.message


@pytest.mark.parametrize(
    "total, batch_size, cap, expected",
    [(0, 100, 300, 100), (10, 100, 300, 100), (1_000, 100, 300, 100), (30_000, 100, 300, 100),
     (30_001, 100, 300, 101), (1_000_000, 1000, 300, 3334), (7, 1, 3, 3)],
)
def test_batch_size_grows_with_the_job(total, batch_size, cap, expected):
    size = effective_batch_size(total, batch_size, cap)
    assert size == expected
    ids = [str(i) for i in range(total)]
    batches = plan_batches(ids, batch_size=batch_size, max_batches=cap)
    assert len(batches) <= cap
    assert [i for b in batches for i in b] == ids


@pytest.mark.parametrize(
    "total, batch_size, workers, batches",
    [(10_000, 1000, 8, 8), (8_000, 1000, 8, 8), (12_000, 1000, 8, 16), (20_000, 1000, 8, 24),
     (52, 10, 8, 8), (3, 10, 8, 1), (100_000, 1000, 8, 100), (5, 1, 8, 5), (12, 1, 8, 12)],
)
def test_short_jobs_are_cut_for_the_workers(total, batch_size, workers, batches):
    ids = [str(i) for i in range(total)]
    planned = plan_batches(ids, batch_size=batch_size, max_batches=300, workers=workers)
    assert len(planned) == batches
    assert [i for b in planned for i in b] == ids


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        effective_batch_size(10, 0, 5)


@pytest.mark.parametrize(
    "succeeded, failed, cancelled, aborted, status",
    [(5, 0, False, False, "completed"), (0, 0, False, False, "completed"), (3, 2, False, False, "partial"),
     (0, 2, False, False, "failed"), (3, 0, True, False, "cancelled"), (3, 1, True, False, "cancelled"),
     (0, 0, False, True, "failed")],
)
def test_status_rules(succeeded, failed, cancelled, aborted, status):
    assert decide_status(succeeded=succeeded, failed=failed, cancelled=cancelled, aborted=aborted) == status


def test_result_document_counts_add_up():
    result = OperationResult(operation_id="op", operation="delete", creator_id="c", requested=6)
    result.add_errors([ItemError("x", "invalid_id")])
    result.add(BatchOutcome(succeeded=["a", "b"], errors=[ItemError("c", "not_found")], objects=4))
    result.add(BatchOutcome(skipped=2))
    doc = result.to_dict()
    assert (doc["requested"], doc["succeeded"], doc["failed"], doc["skipped"]) == (6, 2, 2, 2)
    assert doc["requested"] == doc["succeeded"] + doc["failed"] + doc["skipped"]
    assert doc["status"] == "partial" and doc["errors"][0] == {"video_id": "x", "error": "invalid_id", "detail": ""}
    assert BatchOutcome.from_dict(BatchOutcome(succeeded=["a"], objects=2).to_dict()).objects == 2


def test_a_run_that_could_not_proceed_counts_what_it_never_reached_as_skipped():
    result = OperationResult(operation_id="op", operation="export", creator_id="c", requested=10)
    result.add_errors([ItemError("x", "invalid_id")])
    result.add(BatchOutcome(succeeded=["a", "b"]))
    result.count_unstarted()
    assert result.skipped == 0, "a run that went on to the end leaves nothing to account for"
    result.aborted = True
    result.count_unstarted()
    result.count_unstarted()  # once is enough: calling again changes nothing
    doc = result.to_dict()
    assert (doc["status"], doc["succeeded"], doc["failed"], doc["skipped"]) == ("failed", 2, 1, 7)


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_formula_guard(cell):
    assert guard_formula(cell) == "'" + cell
    assert guard_formula("plain " + cell) == "plain " + cell


def test_error_report_is_rfc4180_and_guarded():
    errors = [ItemError('=cmd|" /C calc"!A0', "invalid_id", 'a "quoted", multi\nline detail'),
              ItemError(GOOD, "not_found", "ünïcode ✓")]
    data = render_error_report(errors)
    assert data.startswith(b"video_id,error,detail\r\n")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert rows[1] == ["'=cmd|\" /C calc\"!A0", "invalid_id", 'a "quoted", multi\nline detail']
    assert rows[2] == [GOOD, "not_found", "ünïcode ✓"]


@pytest.mark.parametrize("n", [3, 1500, 10_005])
def test_the_stored_result_keeps_the_document_and_says_when_it_is_cut(n):
    from flows.result import RESULT_ERROR_ROWS, stored_document

    result = OperationResult(operation_id="op", operation="delete", creator_id="c", requested=n)
    result.add_errors([ItemError(f'id-{i}"', "not_found", "=x, \n y") for i in range(n)])
    document = result.to_dict()
    stored = json.loads(json.dumps(stored_document(document)))  # as the artifact's JSON holds it
    if n <= RESULT_ERROR_ROWS:
        assert stored == document
    else:
        assert stored["errors"] == document["errors"][:RESULT_ERROR_ROWS] and stored["errors_truncated"] is True
        assert stored["failed"] == n


def test_runs_recorded_in_the_old_form_still_read_back():
    """Before the result and the counts were stored as JSON, a run kept its document in
    a fenced block of its markdown summary and its counts in the progress text; a
    recorded pair of such artifacts (tests/data/old_form_artifacts.json) still reads."""
    from pathlib import Path

    from prefect.client.schemas.objects import Artifact

    from service.status import _progress, _result

    recorded = json.loads((Path(__file__).parent / "data" / "old_form_artifacts.json").read_text())
    artifacts = Artifact.model_validate_list([recorded["progress_artifact"], recorded["result_artifact"]])
    assert _result(artifacts) == recorded["document"]
    assert _progress(artifacts) == {"current": 3, "total": 4, "eta_seconds": 7.0}


def test_a_result_of_many_failed_items_keeps_the_first_in_memory_and_spools_every_one(tmp_path):
    """A selection of millions of foreign ids: the result holds the first 10,000 errors
    (what the document lists), counts all, and spools all as report rows (to disk past
    a few MB), streamed to storage as one CSV at the end."""
    from videolib.operation import DOCUMENT_ERROR_ROWS
    from videolib.storage import ObjectStore

    n = 150_000  # about 6 MB of report rows
    result = OperationResult(operation_id="op", operation="delete", creator_id="c", requested=n + 1)
    result.add(BatchOutcome(succeeded=["a"], errors=[ItemError("=1+1", "invalid_id", "x")]))
    for start in range(1, n, 50_000):  # as the staging gives them: a chunk at a time
        result.add_errors([ItemError(f"id-{i}", "not_found", "no such video") for i in range(start, min(n, start + 50_000))])
    doc = result.to_dict()
    assert (doc["failed"], doc["succeeded"], len(doc["errors"])) == (n, 1, DOCUMENT_ERROR_ROWS)
    assert doc["errors_truncated"] is True and doc["status"] == "partial"
    assert doc["errors"][0] == {"video_id": "=1+1", "error": "invalid_id", "detail": "x"}
    assert result.spool._file._rolled, "past a few MB the report's rows are on disk"

    store = ObjectStore.from_url(str(tmp_path / "storage"))
    result.write_report(store, "reports/op.csv")
    result.close()
    rows = list(csv.reader(io.StringIO(store.get("reports/op.csv").decode("utf-8"), newline="")))
    assert rows[0] == ["video_id", "error", "detail"] and len(rows) == 1 + n
    assert rows[1] == ["'=1+1", "invalid_id", "x"] and rows[-1] == [f"id-{n - 1}", "not_found", "no such video"]
    assert store.list_keys("reports/") == ["reports/op.csv"], "no half-written report beside it"
    with pytest.raises(RuntimeError):
        result.write_report(store, "reports/op.csv")  # closed: never a report without its rows


def test_a_dry_run_counts_its_failed_items_and_spools_nothing():
    result = OperationResult(operation_id="op", operation="delete", creator_id="c", requested=3, dry_run=True,
                             errors=[ItemError("x", "not_found")])
    result.add_errors([ItemError("y", "invalid_id"), ItemError("z", "not_found")])
    assert result.failed == 3 and result.spool is None
    doc = result.to_dict()
    assert len(doc["errors"]) == 3 and "errors_truncated" not in doc
