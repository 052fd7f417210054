"""A chart image that is neither baked nor on the environment's registry: in an air gap no
node can ever pull it (an init container's ``busybox``, a sidecar left upstream)."""

from __future__ import annotations

from collections.abc import Iterator

from kiln.lint.charts import classify
from kiln.lint.context import Hit, LintContext
from kiln.lint.rules.chart_upstream import pulled_from, upstream_sources

ID = "chart-unreachable"
LEVEL = "error"


def check(ctx: LintContext) -> Iterator[Hit]:
    upstream = upstream_sources(ctx)
    for found in ctx.chart_refs:
        if classify(found.text, ctx.images, ctx.env.registry).kind != "foreign":
            continue
        if pulled_from(upstream, found.text) is not None:
            continue  # said by chart-upstream, with the ref to write
        yield Hit(found.at, f"{found.text!r} is neither in {ctx.config.path} nor on "
                            f"{ctx.env.registry}: a cold node in an air gap cannot pull it "
                            "(bake it, or point the chart at the registry)", found)
