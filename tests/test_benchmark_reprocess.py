"""The reprocess benchmark still runs end to end (tiny sizes) and verifies its work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_reprocess_benchmark_smoke(tmp_path):
    env = dict(os.environ)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_LOGGING_LEVEL"] = "WARNING"
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "reprocess.py"), "--smoke", "--model-videos", "0",
         "--work-dir", str(tmp_path), "--json", str(tmp_path / "out.json")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for row in ("(a) bulk-reprocess flow", "(b) library", "(c) seed-style baseline", "(d) embedder alone"):
        assert row in proc.stdout, f"{row!r} missing from the report:\n{proc.stdout[-4000:]}"
    assert "NOT VERIFIED" not in proc.stdout
    import json

    doc = json.loads((tmp_path / "out.json").read_text())
    assert {r["ratio"] for r in doc["ratios"]} >= {"a/b", "c/a", "a/d"}
    assert all(v["verified"] for v in doc["results"].values())
