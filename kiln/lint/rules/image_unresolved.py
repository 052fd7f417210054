"""A map that looks like an image but no known convention resolves: never silence."""

from __future__ import annotations

from collections.abc import Iterator

from kiln.lint.context import Hit, LintContext

ID = "image-unresolved"
LEVEL = "warning"


def check(ctx: LintContext) -> Iterator[Hit]:
    for at, key in ctx.unresolved:
        yield Hit(at, f"{key!r} looks like an image map, but no known convention resolves it "
                      "to an image (see README, lint: image conventions)")
