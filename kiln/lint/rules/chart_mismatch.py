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
                      f"{match.image.name!r}): any other string misses the node cache", found,
                      _guessed(found, match.image.ref))


def _where(found: ChartRef, declared: str) -> Location:
    """For a reference composed from values: the tag's line when only the tag is wrong (a
    chart default under an overridden registry, say), else the repository's; for one written
    whole, where it was written."""
    try:
        have, want = refs.parse(found.text), refs.parse(declared)
        same = refs.normalize(found.text).repository == refs.normalize(declared).repository
    except refs.ReferenceError:
        return found.at
    if same and have.tag == want.tag:
        return found.digest_at or found.at  # a digest left over, or another one
    return (found.tag_at if same else found.name_at) or found.at


def _guessed(found: ChartRef, declared: str) -> str:
    """Soft when only the tag differs and it is the chart's appVersion (no tag in values):
    the chart's templates may render it otherwise (``v`` + appVersion, a suffix)."""
    if not found.tag_guessed:
        return ""
    try:
        same = refs.normalize(found.text).repository == refs.normalize(declared).repository
    except refs.ReferenceError:
        return ""
    return ("the tag is the chart's appVersion, which its templates may render otherwise: "
            "set the tag in values, or lint the rendered chart") if same else ""
