"""A chart still names a declared image's upstream ``pull:`` source instead of its ref."""

from __future__ import annotations

from collections.abc import Iterator

from kiln import refs
from kiln.lint.charts import classify
from kiln.lint.context import Hit, LintContext
from kiln.model import Image, PullSource

ID = "chart-upstream"
LEVEL = "error"


def _normal(text: str) -> str | None:
    try:
        return str(refs.normalize(text))
    except refs.ReferenceError:
        return None


def upstream_sources(ctx: LintContext) -> dict[str, Image]:
    """The declared images by their ``pull:`` source (normalised: ``docker.io/library/…``)."""
    upstream: dict[str, Image] = {}
    for image in ctx.images:
        if isinstance(image.source, PullSource):
            key = _normal(image.source.ref)
            if key is not None:
                upstream.setdefault(key, image)
    return upstream


def pulled_from(upstream: dict[str, Image], text: str) -> Image | None:
    """The declared image whose upstream source ``text`` names, if any."""
    return upstream.get(_normal(text) or "")


def check(ctx: LintContext) -> Iterator[Hit]:
    upstream = upstream_sources(ctx)
    for found in ctx.chart_refs:
        named = pulled_from(upstream, found.text)
        if named is None or classify(found.text, ctx.images, ctx.env.registry).kind in (
                "declared", "mismatch"):
            continue  # a declared ref is right; a mismatch is said by chart-mismatch
        yield Hit(found.at, f"{found.text!r} is the upstream source of image {named.name!r}: "
                            f"should be {named.ref!r}, the name the nodes hold", found)
