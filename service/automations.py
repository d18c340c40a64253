"""The Prefect automations bulkops relies on (``prefect-automations.yaml``), created on a
Prefect server when missing: what ``prefect automation create --from-file
prefect-automations.yaml`` does by hand, and ``bulkops serve`` does by itself.

Today one: a run whose heartbeats stop (its process was killed with its worker, its
machine lost) is marked Crashed, so the claims it held are taken over at once
(``videolib.takeover``) instead of after the reprocess lease.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

AUTOMATIONS_FILE = Path(__file__).resolve().parent.parent / "prefect-automations.yaml"


def ensure_automations(path: Path = AUTOMATIONS_FILE) -> list[str]:
    """Create every automation of ``path`` that the Prefect server lacks (by name), and
    bring the ones it has up to the file's definition; the names created or updated."""
    import yaml
    from prefect import get_client
    from prefect.events.schemas.automations import AutomationCore

    specs = (yaml.safe_load(path.read_text()) or {}).get("automations") or []
    created: list[str] = []
    with get_client(sync_client=True) as client:
        for spec in specs:
            automation = AutomationCore.model_validate(spec)
            existing = client.read_automations_by_name(automation.name)
            if existing:
                current = AutomationCore.model_validate(existing[0].model_dump(include=set(AutomationCore.model_fields)))
                if current.model_dump(mode="json") == automation.model_dump(mode="json"):
                    continue
                client.update_automation(existing[0].id, automation)
                created.append(automation.name)
                continue
            client.create_automation(automation)
            created.append(automation.name)
            log.info("created the Prefect automation %s", automation.name)
    return created
