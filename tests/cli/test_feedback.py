"""What the terminal shows while an operation runs: per-batch warnings counted on the bar
and summarised after it (every line still goes to Prefect's own log handler), shown as
they come with --verbose; the announcement that names the operation at once."""

from __future__ import annotations

import io
import logging

from cli.operations import announcement
from cli.render import BatchWarnings


def _console_and_api(name: str):
    """A console handler on the root logger (as Prefect sets it up) and a handler of
    the run's logger standing for Prefect's API log handler."""
    console_out, api_out = io.StringIO(), io.StringIO()
    console, api = logging.StreamHandler(console_out), logging.StreamHandler(api_out)
    root, run_logger = logging.getLogger(), logging.getLogger(name)
    root.addHandler(console)
    run_logger.addHandler(api)
    return console, api, console_out, api_out, lambda: (root.removeHandler(console), run_logger.removeHandler(api))


def test_batch_warnings_are_counted_not_printed_and_kept_in_the_run_log():
    console, _api, console_out, api_out, undo = _console_and_api("prefect.task_runs.test")
    counts = []
    warnings = BatchWarnings(verbose=False, on_count=counts.append)
    warnings.attach()
    try:
        log = logging.getLogger("prefect.task_runs.test")
        for i in range(7):
            log.warning("batch %s: 9 deleted, 1 failed", i)
        logging.getLogger("prefect.flow_runs.test").warning("stopping (Ctrl-C): no new batch starts")
    finally:
        warnings.detach()
        undo()
    assert counts == [1, 2, 3, 4, 5, 6, 7]
    assert "deleted" not in console_out.getvalue(), "batch warnings must not scroll through the bar"
    assert "stopping (Ctrl-C)" in console_out.getvalue(), "the flow's own messages still show"
    assert api_out.getvalue().count("failed") == 7, "the run's log keeps every line"
    summary = warnings.summary()
    assert summary.startswith("7 warnings from the batches") and "batch 0: 9 deleted, 1 failed" in summary
    assert "… and 2 more" in summary and "--verbose" in summary
    assert console not in logging.getLogger().handlers


def test_verbose_shows_each_warning_as_it_comes():
    _console, _api, console_out, _api_out, undo = _console_and_api("prefect.task_runs.verbose")
    warnings = BatchWarnings(verbose=True)
    warnings.attach()
    try:
        logging.getLogger("prefect.task_runs.verbose").warning("batch 3: 0 deleted, 10 failed")
    finally:
        warnings.detach()
        undo()
    assert "batch 3: 0 deleted, 10 failed" in console_out.getvalue() and warnings.count == 1


def test_no_warnings_no_summary():
    assert BatchWarnings(verbose=False).summary() is None


def test_the_announcement_names_the_operation_and_how_to_follow_or_stop_it():
    text = announcement("0f4be77e-4102-42dd-8a1e-8f94a4ef73cd", "http://127.0.0.1:4200")
    assert text.startswith("Operation 0f4be77e-4102-42dd-8a1e-8f94a4ef73cd started")
    assert "http://127.0.0.1:4200/runs/flow-run/0f4be77e-4102-42dd-8a1e-8f94a4ef73cd" in text
    assert "bulkops status 0f4be77e" in text and "bulkops cancel 0f4be77e" in text
    assert "http" not in announcement("0f4be77e-4102-42dd-8a1e-8f94a4ef73cd", None)


def test_status_says_how_the_webhook_went(capsys):
    from cli.render import print_status

    document = {"operation_id": "op-1", "operation": "delete", "creator_id": "creator-001", "status": "completed",
                "progress": {"current": 2, "total": 2, "percent": 100.0}, "eta_seconds": None, "result": None,
                "webhook": {"attempts": 3, "last_status": 200, "delivered": True}}
    print_status(document)
    assert "Webhook: delivered (3 attempts, last answer HTTP 200)" in capsys.readouterr().out
    print_status({**document, "webhook": {"attempts": 1, "last_status": None, "delivered": False}})
    assert "Webhook: not delivered yet (1 attempt)" in capsys.readouterr().out


def test_the_summary_counts_every_failed_item_when_the_result_lists_the_first(capsys):
    from cli.render import print_result

    listed = [{"video_id": f"id-{i}", "error": "not_found", "detail": "no such video for this creator"}
              for i in range(10_000)]
    document = {"operation_id": "op-1", "operation": "delete", "creator_id": "creator-001", "status": "partial",
                "requested": 30_001, "succeeded": 1, "failed": 30_000, "skipped": 0, "errors": listed,
                "errors_truncated": True, "report_path": "reports/op-1.csv", "dry_run": False, "duration_s": 1.0}
    print_result(document)
    text = capsys.readouterr().out
    assert "Failed items: 30000 (the result lists the first 10000: 10000 not_found)" in text
    assert "… and 29990 more" in text and "reports/op-1.csv" in text
    print_result({**document, "failed": 3, "errors": listed[:3], "errors_truncated": False, "requested": 4})
    text = capsys.readouterr().out
    assert "Failed items: 3 not_found" in text and "more" not in text
