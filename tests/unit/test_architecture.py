"""The rule "the core knows no Docker, boto3 or subprocess", enforced rather than hoped for."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EDGE_LIBRARIES = ("docker", "boto3", "botocore", "requests", "s3transfer")
# Core modules: pure, testable without engines (DESIGN.md, "Which part may know which").
CORE = ("refs", "config", "yamlio", "grammar", "errors", "lock", "files", "ociarchive", "copied",
        "manifests", "ports", "project", "inventory", "pem", "cloudconfig", "render", "verify",
        "diff", "model", "schema", "environments", "locators", "buildinputs", "tarstream",
        "lint/__init__", "lint/charts", "lint/context", "lint/rules/__init__", "lint/values",
        "lint/conventions", "lookups", "replay", "provenance", "der", "keyless")
FORBIDDEN_IN_CORE = (*EDGE_LIBRARIES, "subprocess", "kiln.cli", "kiln.commands",
                     "kiln.engine", "kiln.containerd", "kiln.localengine", "kiln.vm",
                     "kiln.stores.s3", "kiln.registry", "kiln.upstream")


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


def test_bake_loads_the_docker_sdk_only_for_an_engine() -> None:
    """A bake of pull sources and OCI archives needs no engine: its start-up skips the SDK."""
    probe = "import sys, kiln.cli, kiln.commands.bake; print('docker' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_rule_ids_the_config_accepts_are_the_rules_that_run() -> None:
    from kiln.lint.rules import RULES
    from kiln.model import RULE_IDS

    assert tuple(rule.ID for rule in RULES) == RULE_IDS


def test_no_import_circle_in_the_package() -> None:
    """Module-level imports between kiln's modules form no cycle (function-local imports of
    edges by the commands are the allowed exception, and are not module-level)."""
    graph: dict[str, set[str]] = {}
    for path in (ROOT / "kiln").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        found: set[str] = set()
        for node in tree.body:  # module level only
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kiln"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("kiln"))
        graph[name] = found
    graph = {k: {d for d in v if d in graph and d != k} for k, v in graph.items()}

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        if node in stack:
            circle = [*stack[stack.index(node):], node]
            raise AssertionError("import circle: " + " -> ".join(circle))
        if node in done:
            return
        for dep in sorted(graph[node]):
            visit(dep, [*stack, node], done)
        done.add(node)

    finished: set[str] = set()
    for module in sorted(graph):
        visit(module, [], finished)


def test_modules_and_functions_stay_small() -> None:
    """Issue 11's facts anyone can check: no module over ~400 lines, no function over ~60."""
    too_big = []
    for path in sorted((ROOT / "kiln").rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 440:
            too_big.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 60:
                    too_big.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: "
                                   f"{length} lines")
    assert too_big == []


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*.py")))
def test_the_benchmarks_import_what_exists(script: str) -> None:
    """A benchmark is run by hand, not by the tests: at least its kiln imports must resolve
    (bench/render.py once imported a function that had moved)."""
    tree = ast.parse((ROOT / "bench" / script).read_text())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kiln"):
            module = importlib.import_module(node.module)
            missing = [a.name for a in node.names if not hasattr(module, a.name)
                       and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
            assert missing == [], f"bench/{script}: {node.module} has no {missing}"
