"""The rule "the core knows no Docker, boto3 or subprocess", enforced rather than hoped for."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EDGE_LIBRARIES = ("docker", "boto3", "botocore", "requests", "s3transfer")
# Core modules: pure, testable without engines (DESIGN.md, "Which part may know which").
CORE = ("refs", "config", "yamlio", "grammar", "errors", "lock", "files", "ociarchive",
        "manifests", "ports", "project", "inventory", "pem", "cloudconfig", "render", "verify",
        "diff", "lint/__init__", "lint/charts", "lint/context", "lint/rules/__init__")
FORBIDDEN_IN_CORE = (*EDGE_LIBRARIES, "subprocess", "kiln.cli", "kiln.commands",
                     "kiln.engine", "kiln.containerd", "kiln.localengine", "kiln.vm",
                     "kiln.stores.s3", "kiln.registry")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("module", CORE)
def test_core_modules_import_no_edge(module: str) -> None:
    path = ROOT / "kiln" / f"{module}.py"
    bad = sorted(name for name in imported_modules(path)
                 if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_CORE))
    assert bad == [], f"kiln/{module}.py imports {bad}"


@pytest.mark.parametrize("command", ["lint", "render", "verify", "diff"])
def test_commands_that_need_no_engine_load_none(command: str) -> None:
    """In a fresh interpreter: the modules behind the command, then what got loaded."""
    probe = (f"import sys, kiln.cli, kiln.commands.{command}; "
             f"print(__import__('json').dumps(sorted(m for m in {EDGE_LIBRARIES!r} "
             "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out) == [], f"`kiln {command}` loads {out.strip()}"
