"""What this process may use of the machine."""

from __future__ import annotations

import os


def cores() -> int:
    """The cores this process may run on (affinity and cpusets included)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
