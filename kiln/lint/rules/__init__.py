"""The lint rules, one module each; ``RULES`` is the order they run in."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Protocol, cast

if TYPE_CHECKING:
    from kiln.lint.context import Hit, LintContext

# Ids only, so that the config loader can validate `lint: levels:` without importing rules.
RULE_IDS = (
    "not-fully-qualified",
    "mutable-tag",
    "registry-mismatch",
    "duplicate-ref",
    "duplicate-name",
    "unpinned-upstream",
    "chart-undeclared",
    "chart-mismatch",
    "pull-policy-always",
)


class Rule(Protocol):
    ID: str
    LEVEL: str

    def check(self, ctx: LintContext) -> Iterator[Hit]: ...


def _load() -> tuple[Rule, ...]:
    import importlib

    modules: list[ModuleType] = [
        importlib.import_module(f"kiln.lint.rules.{rule_id.replace('-', '_')}")
        for rule_id in RULE_IDS
    ]
    return tuple(cast(Rule, m) for m in modules)


RULES = _load()
