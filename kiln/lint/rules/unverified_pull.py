"""A pull source whose upstream signature bake does not check (no `verify:` key or keyless
policy)."""

from __future__ import annotations

from collections.abc import Iterator

from kiln.lint.context import Hit, LintContext
from kiln.model import PullSource

ID = "unverified-pull"
LEVEL = "warning"


def check(ctx: LintContext) -> Iterator[Hit]:
    for image in ctx.images:
        source = image.source
        if not isinstance(source, PullSource):
            continue
        policy = source.verify if source.verify is not None else ctx.env.verify
        if policy is None:
            yield Hit(image.source_at, f"pull source {source.ref!r} is taken unverified: give "
                                       "the upstream's public key (verify: {key: FILE}) or "
                                       "its keyless signer (verify: {identity, issuer, roots, "
                                       "rekor_key}) on the environment or the image, or say "
                                       "verify: none")
        elif not policy.checked:
            yield Hit(policy.at, f"verify: none: the upstream signature of {source.ref!r} is "
                                 "not checked")
