"""The house's rules, read from the code itself (ARCHITECTURE.md): imports point one way,
``config <- videolib <- tasks <- flows <- service <- cli, api``; the domain knows nothing
of Prefect; the front doors reach no further than ``service/``; no product module is
larger than a reader can hold; no block of code is repeated in ``service/``, ``cli/`` or
``flows/`` (pylint's duplicate-code check, 8 similar lines or more)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"config": 0, "videolib": 1, "tasks": 2, "flows": 3, "service": 4, "cli": 5, "api": 5}
FRONT_DOORS = {"cli", "api"}
MAX_LINES = 500
MAX_CLI_LINES = 300


def _modules():
    for package in LAYERS:
        folder = ROOT / package
        if folder.is_dir():
            yield from sorted(folder.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Top-level names of every absolute import in the module, lazy ones included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_there_are_modules_to_check():
    assert {path.relative_to(ROOT).parts[0] for path in _modules()} >= {"config", "videolib", "tasks", "flows",
                                                                        "service", "cli"}


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path):
    package = path.relative_to(ROOT).parts[0]
    layer = LAYERS[package]
    imported = _imports(path)
    upward = sorted(name for name in imported if name in LAYERS and LAYERS[name] > layer)
    assert not upward, f"{path.relative_to(ROOT)} imports {upward}, above its layer ({package})"
    if package == "videolib":
        assert "prefect" not in imported, f"{path.relative_to(ROOT)}: the domain must not know the orchestrator"
    if package in FRONT_DOORS:
        # `bulkops serve` is the API's own command: the CLI may start the API, nothing deeper.
        allowed = {package, "service", "config"} | ({"api"} if package == "cli" else set())
        past = sorted(name for name in imported if name in LAYERS and name not in allowed)
        assert not past, f"{path.relative_to(ROOT)} reaches past service/: {past}"


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_larger_than_a_reader_can_hold(path):
    lines = len(path.read_text().splitlines())
    limit = MAX_CLI_LINES if path.relative_to(ROOT).parts[0] == "cli" else MAX_LINES
    assert lines <= limit, f"{path.relative_to(ROOT)} has {lines} lines (at most {limit})"


def test_no_code_is_repeated_in_service_cli_or_flows():
    folders = [str(ROOT / name) for name in ("service", "cli", "flows", "api") if (ROOT / name).is_dir()]
    proc = subprocess.run(
        [sys.executable, "-m", "pylint", "--disable=all", "--enable=duplicate-code", "--min-similarity-lines=8",
         "--score=n", *folders],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
