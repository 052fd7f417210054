"""A chart image on the environment's registry that images.yaml does not bake."""

from __future__ import annotations

from collections.abc import Iterator

from kiln.lint.charts import classify
from kiln.lint.context import Hit, LintContext

ID = "chart-undeclared"
LEVEL = "error"


def check(ctx: LintContext) -> Iterator[Hit]:
    for found in ctx.chart_refs:
        if classify(found.text, ctx.images, ctx.env.registry).kind == "undeclared":
            yield Hit(found.at, f"{found.text!r} is on {ctx.env.registry} but not in "
                                f"{ctx.config.path}: a cold node would have to pull it", found)
