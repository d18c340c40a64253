"""End-to-end tests: real processes, servers, workers and signals.

Every module here is marked ``E2E``: with two pytest processes (`make test
TEST_WORKERS=2`) they all run one after another on one of them (pytest-xdist's
``loadgroup``), so their servers, workers, signals and heartbeat waits never compete with
each other on two cores; the other process runs the rest of the suite meanwhile."""

import pytest

E2E = pytest.mark.xdist_group("e2e")


def early_library(request, tmp_path_factory, test_name: str, folder: str):
    """For a module fixture that starts, before the module's other tests, what
    ``test_name`` (last in the module) will check after a long wait: a SQLite library of
    its own, migrated and seeded with 400 videos of one creator, all with transcripts
    (the minilm reprocess the killing tests interrupt); None when that test is not
    selected, so that the fixture does nothing."""
    if not any(item.name == test_name and item.module is request.module for item in request.session.items):
        return None
    from tests.conftest import Library
    from videolib.db.migrate import upgrade

    base = tmp_path_factory.mktemp(folder)
    lib = Library(f"sqlite:///{base / 'bulkops.db'}", str(base / "storage"), None, base / "data")
    upgrade(lib.engine)
    lib.seed(400, creators=1, transcript_ratio=1.0, files=False)
    return lib
