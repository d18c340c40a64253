"""Selections from id manifests under Prefect's real test harness: delete, export and
reprocess read a manifest in storage (text, CSV, Parquet), report what it lists per
item, never touch another creator, and leave no staged ids behind."""

from __future__ import annotations

import csv
import io
import uuid
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _staged_rows(lib) -> int:
    from videolib.db.models import StagedId

    with lib.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(StagedId)).scalar()


def _mixed(lib, mine: list[str], theirs: list[str]) -> tuple[list[str], str]:
    unknown = str(uuid.uuid4())
    lines = mine + mine[:3] + [m.upper() for m in mine[3:5]] + theirs + ["not-a-uuid", '=cmd|" /C calc"!A0', unknown]
    return lines, unknown


def test_delete_from_a_manifest_reports_each_line_and_touches_only_the_creators_videos(library):
    from flows.bulk_delete import bulk_delete

    library.seed(60, creators=2)
    mine, theirs = library.ids("creator-001")[:20], library.ids("creator-002")
    assert len(mine) == 20 and len(theirs) > 4
    lines, unknown = _mixed(library, mine, theirs[:4])
    key = "manifests/creator-001/mixed.txt"
    library.store.put(key, ("\n".join(lines) + "\n").encode())

    state = bulk_delete(creator_id="creator-001", manifest=key, batch_size=7, return_state=True)

    doc = state.result()
    assert state.name == "Partial" and doc["status"] == "partial"
    assert doc["requested"] == 20 + 4 + 2 + 1 and doc["succeeded"] == 20 and doc["failed"] == 7
    errors = {e["video_id"]: e["error"] for e in doc["errors"]}
    assert errors == {**{t: "not_found" for t in theirs[:4]}, unknown: "not_found", "not-a-uuid": "invalid_id",
                      '=cmd|" /C calc"!A0': "invalid_id"}
    assert doc["manifest"]["key"] == key and doc["manifest"]["lines"] == len(lines)
    assert len(doc["manifest"]["sha256"]) == 64
    assert not set(mine) & set(library.ids("creator-001")) and library.ids("creator-002") == theirs
    assert doc["verified"]["videos"] == 20 and _staged_rows(library) == 0


def test_a_whole_library_past_the_limit_is_staged_and_a_stopped_delete_of_it_converges(library, monkeypatch):
    """``all_videos`` over ``STAGE_LIBRARY_ABOVE`` videos: staged like a manifest (batches
    are ranges, not lists of ids), dropped as the run ends; stopped after its first batch
    and run again, every video is gone exactly once and the other creator's are kept."""
    import flows.selection
    from flows.bulk_delete import bulk_delete
    from flows.progress import listening
    from prefect.exceptions import TerminationSignal

    monkeypatch.setattr(flows.selection, "STAGE_LIBRARY_ABOVE", 10)
    library.seed(200, creators=2, files=False)
    mine, theirs = library.ids("creator-001"), library.ids("creator-002")
    staged_meanwhile: list[int] = []

    def stop_after_the_first_batch(event):
        if event.result is None and event.batches_done == 1 and not staged_meanwhile:
            staged_meanwhile.append(_staged_rows(library))
            raise TerminationSignal(signal=15)

    with listening(stop_after_the_first_batch):
        stopped = bulk_delete(creator_id="creator-001", all_videos=True, batch_size=1, return_state=True)
    assert stopped.is_cancelled(), stopped
    assert staged_meanwhile == [len(mine)] and _staged_rows(library) == 0
    left = library.ids("creator-001")
    assert 0 < len(mine) - len(left) < len(mine), "the first batch ran, not all of them"

    state = bulk_delete(creator_id="creator-001", all_videos=True, batch_size=5, return_state=True)
    doc = state.result()
    assert doc["status"] == "completed" and doc["requested"] == doc["succeeded"] == len(left), doc
    assert library.ids("creator-001") == [] and library.ids("creator-002") == theirs
    assert doc["verified"]["videos"] == len(left) and _staged_rows(library) == 0


def test_manifest_refusals_in_the_flow_touch_nothing(sqlite_library):
    from flows.bulk_delete import bulk_delete

    lib = sqlite_library
    lib.seed(10, creators=2)
    before = lib.ids("creator-001")
    lib.store.put("manifests/creator-002/theirs.txt", ("\n".join(before) + "\n").encode())
    cases = {
        "manifests/creator-002/theirs.txt": "bad_manifest",
        "manifests/creator-001/../creator-002/theirs.txt": "bad_manifest",
        "manifests/creator-001/none.txt": "manifest_not_found",
    }
    from service.status import read_status

    def refused(**params) -> str:
        state = bulk_delete(creator_id="creator-001", **params, return_state=True)
        assert state.is_failed()
        return read_status(str(state.state_details.flow_run_id))["result"]["error"]

    for key, code in cases.items():
        assert refused(manifest=key) == code, key
    lib.store.put("manifests/creator-001/mine.txt", ("\n".join(before) + "\n").encode())
    assert refused(manifest="manifests/creator-001/mine.txt", all_videos=True) == "bad_selection"
    assert lib.ids("creator-001") == before and _staged_rows(lib) == 0


def test_export_and_reprocess_from_smaller_manifests(library):
    from flows.bulk_export import bulk_export
    from flows.bulk_reprocess import bulk_reprocess

    library.seed(60, creators=2, transcript_ratio=1.0, status="ready")
    mine, theirs = library.ids("creator-001"), library.ids("creator-002")
    buffer = io.BytesIO()
    pq.write_table(pa.table({"video_id": mine[:10] + theirs[:2] + mine[:2]}), buffer)
    library.store.put("manifests/creator-001/some.parquet", buffer.getvalue())
    library.store.put("manifests/creator-001/some.csv",
                      ("video_id,note\n" + "".join(f"{v},x\n" for v in mine[5:15])).encode())

    exported = bulk_export(creator_id="creator-001", manifest="manifests/creator-001/some.parquet",
                           batch_size=100, return_state=True).result()
    assert exported["status"] == "partial" and exported["succeeded"] == 10 and exported["failed"] == 2
    table = pq.read_table(io.BytesIO(library.store.get(exported["output"]["path"])))
    assert sorted(table.column("id").to_pylist()) == sorted(mine[:10])
    assert exported["manifest"]["lines"] == 14

    reprocessed = bulk_reprocess(creator_id="creator-001", manifest="manifests/creator-001/some.csv",
                                 batch_size=3, return_state=True).result()
    assert reprocessed["status"] == "completed" and reprocessed["succeeded"] == 10, reprocessed
    assert reprocessed["manifest"]["key"] == "manifests/creator-001/some.csv"
    assert _staged_rows(library) == 0


_PEAK = """
import json, resource, sys
from flows.bulk_delete import bulk_delete
doc = bulk_delete(creator_id="creator-001", manifest=sys.argv[1], return_state=True).result(raise_on_failure=False)
print(json.dumps({"doc": {**{k: doc[k] for k in ("status", "requested", "succeeded", "failed", "manifest",
                                                 "report_path")},
                          "listed": len(doc["errors"]), "errors_truncated": doc.get("errors_truncated", False)},
                  "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _delete_in_a_process(lib, key: str) -> tuple[dict, int]:
    """The delete of a manifest in a process of its own (its peak memory is the run's);
    on the harness's Prefect server."""
    import json
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, **lib.env(), "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.run([sys.executable, "-c", _PEAK, key], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    return answer["doc"], answer["peak_kb"] * 1024


@pytest.mark.slow
def test_a_200k_line_manifest_is_deleted_exactly_in_bounded_memory(library):
    """200,000 lines mixing owned, foreign, unknown, malformed and duplicate ids: exact
    counts, nothing foreign touched; the run's peak memory within 50 MB of a 20,000-line
    run of the same mix (the list is streamed and staged, never held)."""
    from videolib.seed import seed_library

    seed_library(library.engine, None, None, videos=100_000, creators=2, seed=3, transcript_ratio=0.0)
    mine, theirs = library.ids("creator-001"), library.ids("creator-002")
    assert len(mine) > 44_000 and len(theirs) > 44_000

    def manifest(name: str, owned: list[str], foreign: list[str], n: int) -> tuple[str, list[str]]:
        # a fifth owned, a fifth another creator's, two fifths no video's, a tenth
        # malformed, a tenth repeated
        unknown = [str(uuid.UUID(int=(len(name) << 64) | i)) for i in range(2 * n // 5)]
        malformed = [f"bad-{name}-{i}" for i in range(n // 10)]
        lines = owned + foreign + unknown + malformed + owned[: n // 10]
        assert len(lines) == n
        key = f"manifests/creator-001/{name}.txt"
        library.store.put(key, ("\n".join(lines) + "\n").encode())
        return key, lines

    small_key, _ = manifest("small", mine[:4_000], theirs[:4_000], 20_000)
    big_key, lines = manifest("big", mine[4_000:44_000], theirs[4_000:44_000], 200_000)

    small, small_peak = _delete_in_a_process(library, small_key)
    big, big_peak = _delete_in_a_process(library, big_key)

    assert (small["requested"], small["succeeded"], small["failed"]) == (18_000, 4_000, 14_000)
    assert (big["requested"], big["succeeded"], big["failed"]) == (180_000, 40_000, 140_000)
    assert big["status"] == "partial" and big["manifest"]["lines"] == len(lines) == 200_000
    # The document lists the first 10,000 failed items (CONTRACT.md); the report has all
    # 140,000, each once, by kind: what the run held of them in memory is the first 10,000.
    assert (small["listed"], small["errors_truncated"]) == (10_000, True)
    assert (big["listed"], big["errors_truncated"]) == (10_000, True)
    with library.store.open(big["report_path"], "rb") as raw:
        rows = list(csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline="")))
    assert rows[0] == ["video_id", "error", "detail"] and len(rows) == 1 + 140_000
    assert Counter(row[1] for row in rows[1:]) == {"not_found": 120_000, "invalid_id": 20_000}
    assert len({row[0] for row in rows[1:]}) == 140_000
    assert set(library.ids("creator-001")) == set(mine[44_000:]) and library.ids("creator-002") == theirs
    assert _staged_rows(library) == 0
    print(f"peak RSS: 20,000 lines {small_peak / 2**20:.0f} MiB, 200,000 lines {big_peak / 2**20:.0f} MiB")
    assert big_peak - small_peak <= 50 * 2**20, f"peak {small_peak / 2**20:.0f} MiB -> {big_peak / 2**20:.0f} MiB"
