"""The one takeover rule (videolib/takeover.py): a claim another run left is taken at once
when that run has ended, after the lease otherwise, never when another pipeline holds the
video; the same rule in the claim, the --all selection and its refusal check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from videolib.db.models import Video
from videolib.embedders import get_embedder
from videolib.reprocess import BUSY, any_reprocessable, claim_batch, reprocess_batch, select_reprocessable
from videolib.takeover import Takeover

ENDED = "11111111-1111-4111-8111-111111111111"
RUNNING = "22222222-2222-4222-8222-222222222222"
ME = "33333333-3333-4333-8333-333333333333"


class KnownRuns:
    """Answers as an orchestrator would: these runs have ended, the others have not."""

    def __init__(self, ended):
        self.ended = set(ended)
        self.asked: list[set[str]] = []

    def finished(self, run_ids):
        self.asked.append(set(run_ids))
        return self.ended & set(run_ids)


def _hold(lib, ids, holder, *, age_s=0.0):
    with lib.engine.begin() as conn:
        conn.execute(update(Video).where(Video.id.in_(ids)).values(
            status="processing", processing_by=holder, updated_at=datetime.now(UTC) - timedelta(seconds=age_s)))


def _transcribed(lib):
    with lib.engine.connect() as conn:
        return list(conn.execute(select(Video.id).where(Video.creator_id == "creator-001",
                                                        Video.status != "processing").order_by(Video.id)).scalars())


def test_the_rule_itself():
    now = datetime.now(UTC)
    rule = Takeover(ME, cutoff=now - timedelta(hours=1), ended=frozenset({ENDED}))
    assert rule.may_take(ENDED, now)  # ended: at once
    assert not rule.may_take(RUNNING, now)  # running, within its lease
    assert rule.may_take(RUNNING, now - timedelta(hours=2))  # past the lease
    assert rule.may_take(ME, now)  # its own (a retried batch)
    assert not rule.may_take(None, now - timedelta(days=9))  # another pipeline's: never
    assert rule.may_take(RUNNING, (now - timedelta(hours=2)).replace(tzinfo=None))  # naive = UTC


def test_a_claim_of_an_ended_run_is_taken_at_once_and_a_running_ones_is_busy(library):
    lib = library
    lib.seed(20, creators=1, transcript_ratio=1.0)
    ids = _transcribed(lib)
    _hold(lib, ids[:3], ENDED)
    _hold(lib, ids[3:5], RUNNING)
    holders = KnownRuns({ENDED})
    claimed, errors = claim_batch(lib.engine, creator_id="creator-001", video_ids=ids, operation_id=ME,
                                  lease_s=3600, holders=holders)
    assert set(ids[:3]) <= set(claimed)
    assert {e.video_id: e.error for e in errors} == {v: BUSY for v in ids[3:5]}
    assert holders.asked == [{ENDED, RUNNING}], "one question, about the holders within their lease"
    # Without an orchestrator to ask, only the lease counts.
    _hold(lib, ids[:3], ENDED)
    _, errors = claim_batch(lib.engine, creator_id="creator-001", video_ids=ids[:3], operation_id=RUNNING,
                            lease_s=3600)
    assert {e.error for e in errors} == {BUSY}


def test_all_videos_and_its_refusal_use_the_same_rule(library):
    lib = library
    lib.seed(12, creators=1, transcript_ratio=1.0)
    ids = _transcribed(lib)
    _hold(lib, ids, ENDED)
    assert not any_reprocessable(lib.engine, "creator-001", lease_s=3600)
    assert any_reprocessable(lib.engine, "creator-001", lease_s=3600, holders=KnownRuns({ENDED}))
    selection = select_reprocessable(lib.engine, "creator-001", operation_id=ME, lease_s=3600,
                                     holders=KnownRuns({ENDED}))
    assert set(ids) <= set(selection.ids)
    outcome = reprocess_batch(lib.engine, get_embedder("hashing"), creator_id="creator-001", video_ids=ids,
                              operation_id=ME, holders=KnownRuns({ENDED}))
    assert sorted(outcome.succeeded) == sorted(ids) and not outcome.errors
    with lib.engine.connect() as conn:
        assert conn.execute(select(Video.processing_by).where(Video.id.in_(ids))).scalars().all() == [None] * len(ids)
