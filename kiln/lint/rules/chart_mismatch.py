"""A chart names a declared image differently: kubelet would miss the side-loaded copy."""

from __future__ import annotations

from collections.abc import Iterator

from kiln.lint.charts import classify
from kiln.lint.context import Hit, LintContext

ID = "chart-mismatch"
LEVEL = "error"


def check(ctx: LintContext) -> Iterator[Hit]:
    for found in ctx.chart_refs:
        match = classify(found.text, ctx.images, ctx.env.registry)
        if match.kind == "mismatch" and match.image is not None:
            yield Hit(found.at, f"{found.text!r} should be {match.image.ref!r} (image "
                                f"{match.image.name!r}): any other string misses the node cache")
