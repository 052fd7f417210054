"""A chart names a declared image differently: kubelet would miss the side-loaded copy."""

from __future__ import annotations

from collections.abc import Iterator

from kiln import refs
from kiln.lint.charts import ChartRef, classify
from kiln.lint.context import Hit, LintContext
from kiln.model import Location

ID = "chart-mismatch"
LEVEL = "error"


def check(ctx: LintContext) -> Iterator[Hit]:
    for found in ctx.chart_refs:
        match = classify(found.text, ctx.images, ctx.env.registry)
        if match.kind == "mismatch" and match.image is not None:
            yield Hit(_where(found, match.image.ref),
                      f"{found.text!r} should be {match.image.ref!r} (image "
                      f"{match.image.name!r}): any other string misses the node cache")


def _where(found: ChartRef, declared: str) -> Location:
    """For a reference composed from values: the tag's line when only the tag is wrong (a
    chart default under an overridden registry, say), else the repository's; for one written
    whole, where it was written."""
    try:
        same = refs.normalize(found.text).repository == refs.normalize(declared).repository
    except refs.ReferenceError:
        return found.at
    return (found.tag_at if same else found.name_at) or found.at
