"""A map that looks like an image but no known convention resolves: never silence."""

from __future__ import annotations

from collections.abc import Iterator

from kiln.lint.context import Hit, LintContext

ID = "image-unresolved"
LEVEL = "warning"


def check(ctx: LintContext) -> Iterator[Hit]:
    for at, message in ctx.unresolved:
        yield Hit(at, message)
