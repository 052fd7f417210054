"""A pull source without a digest: a rebake could silently take different bytes."""

from __future__ import annotations

from collections.abc import Iterator

from kiln import refs
from kiln.lint.context import Hit, LintContext
from kiln.model import PullSource

ID = "unpinned-upstream"
LEVEL = "warning"


def check(ctx: LintContext) -> Iterator[Hit]:
    for image in ctx.images:
        source = image.source
        if isinstance(source, PullSource) and refs.parse(source.ref).digest is None:
            yield Hit(image.source_at, f"pull source {source.ref!r} is not pinned: "
                                       "add @sha256:<digest> so every bake takes the same bytes")
