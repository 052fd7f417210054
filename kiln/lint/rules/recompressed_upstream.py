"""A pull source recompressed (`recompress: true`, or the environment's `compression: pulls:
recompress`): the nodes then hold kiln's manifest, not the upstream's."""

from __future__ import annotations

from collections.abc import Iterator

from kiln.lint.context import Hit, LintContext
from kiln.model import PullSource, recompresses

ID = "recompressed-upstream"
LEVEL = "warning"


def check(ctx: LintContext) -> Iterator[Hit]:
    for image in ctx.images:
        source = image.source
        if not isinstance(source, PullSource) or not recompresses(image, ctx.env):
            continue
        by_image = image.recompress is True
        why = ("recompress: true" if by_image
               else f"environment {ctx.env.name}: compression pulls: recompress")
        # the environment's opt-in: at each image it applies to (one finding each)
        where = image.recompress_at if by_image else None
        yield Hit(where or image.source_at,
                  f"pull source {source.ref!r} is recompressed ({why}): its manifest digest "
                  "becomes kiln's, so a chart pinning the upstream digest misses the node "
                  "cache and upstream signatures no longer match what the nodes hold")
