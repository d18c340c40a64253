"""The runner ``bulkops serve`` starts: Prefect's ``serve()`` over a deployment of every
bulkops flow (``{flow}/{flow}``, as prefect.yaml names them), executing at most
``--limit`` runs at once, each in its own process; ``cleanup`` on its daily cron
(``BULKOPS_CLEANUP_CRON``, UTC).

    python -m service.runner --limit 4

Flows are deployed by module path (``flows.bulk_delete.bulk_delete``), so the runs
import the installed project whatever the working directory.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.runner")
    parser.add_argument("--limit", type=int, required=True)
    args = parser.parse_args(argv)

    import os

    from service.environment import prefect_defaults

    prefect_defaults()
    # Prefect's runner looks for new runs every 10 s by default: a run created over the API
    # would wait up to that long to start. One cheap query every 2 s instead.
    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "2")
    from prefect import serve
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from config import get_settings
    from flows import CLEANUP, FLOWS

    cron = get_settings().cleanup_cron  # the daily cleanup, unless BULKOPS_CLEANUP_CRON=off
    deployments = [FLOWS[name]().to_deployment(
        name=name, entrypoint_type=EntrypointType.MODULE_PATH,
        **({"schedule": Cron(cron, timezone="UTC")} if name == CLEANUP and cron else {})) for name in sorted(FLOWS)]
    serve(*deployments, limit=args.limit, pause_on_shutdown=False, print_starting_message=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
