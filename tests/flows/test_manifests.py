"""Selections from id manifests under Prefect's real test harness: delete, export and
reprocess read a manifest in storage (text, CSV, Parquet), report what it lists per
item, never touch another creator, and leave no staged ids behind."""

from __future__ import annotations

import io
import uuid

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
