"""The lint rules, one module each; ``RULES`` is the order they run in.

The ids live in kiln/model.py (RULE_IDS), so that the config reader can validate `lint:
levels:` without importing the rules; a test keeps the two lists equal.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, cast

from kiln.lint.rules import (
    chart_digest_mismatch,
    chart_invalid,
    chart_mismatch,
    chart_undeclared,
    chart_unreachable,
    chart_upstream,
    duplicate_name,
    duplicate_ref,
    image_unresolved,
    mutable_tag,
    not_fully_qualified,
    pull_policy_always,
    recompressed_upstream,
    registry_mismatch,
    unpinned_upstream,
    unverified_pull,
)
from kiln.model import RULE_IDS

if TYPE_CHECKING:
    from kiln.lint.context import Hit, LintContext

__all__ = ["RULES", "RULE_IDS", "Rule"]


class Rule(Protocol):
    ID: str
    LEVEL: str

    def check(self, ctx: LintContext) -> Iterator[Hit]: ...


RULES: tuple[Rule, ...] = tuple(cast(Rule, module) for module in (
    not_fully_qualified, mutable_tag, registry_mismatch, duplicate_ref, duplicate_name,
    unpinned_upstream, chart_undeclared, chart_mismatch, pull_policy_always,
    image_unresolved, chart_upstream, chart_unreachable, chart_invalid, chart_digest_mismatch,
    unverified_pull, recompressed_upstream,
))
