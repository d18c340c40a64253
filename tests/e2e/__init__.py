"""End-to-end tests: real processes, servers, workers and signals.

Every module here is marked ``E2E``: with two pytest processes (`make test
TEST_WORKERS=2`) they all run one after another on one of them (pytest-xdist's
``loadgroup``), so their servers, workers, signals and heartbeat waits never compete with
each other on two cores; the other process runs the rest of the suite meanwhile."""

import pytest

E2E = pytest.mark.xdist_group("e2e")
