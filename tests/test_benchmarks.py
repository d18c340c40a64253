"""The delete benchmark still runs end to end (tiny sizes, local scenario only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_delete_benchmark_smoke(tmp_path):
    env = dict(os.environ)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_LOGGING_LEVEL"] = "WARNING"
    env.pop("PREFECT_API_URL", None)  # its own test server, not a shared one
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "delete.py"), "--smoke", "--only", "local",
         "--work-dir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for row in ("(a) bulk-delete flow", "(b) library", "(c) seed-style baseline", "(d) floor"):
        assert row in proc.stdout, f"{row!r} missing from the report:\n{proc.stdout[-4000:]}"
    assert "NOT VERIFIED" not in proc.stdout


def test_export_benchmark_smoke(tmp_path):
    env = dict(os.environ)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_LOGGING_LEVEL"] = "WARNING"
    env.pop("PREFECT_API_URL", None)  # its own test server, not a shared one
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "export.py"), "--smoke", "--only", "sqlite",
         "--work-dir", str(tmp_path), "--json", str(tmp_path / "export.json")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for row in ("(a) flow, Parquet", "(a) flow, CSV", "(b) raw -> ParquetWriter", "(c) seed-style csv module"):
        assert row in proc.stdout, f"{row!r} missing from the report:\n{proc.stdout[-4000:]}"
    assert "NOT VERIFIED" not in proc.stdout
    import json

    results = json.loads((tmp_path / "export.json").read_text())["results"]["sqlite-2k"]
    assert set(results) == {"a", "a-csv", "b", "c"}
    for variant, m in results.items():
        assert m["verified"] and m["rows"] == 2000, (variant, m["verify_detail"])
        assert 0 < m["growth_mb"] < 2048, (variant, m["growth_mb"])  # a peak RSS was measured
