"""A chart pins a digest (``ref@sha256:…``, ``repo@sha256:…``) that is not the lock's: nodes
hold ``repo@sha256:<the lock's digest>`` only, so kubelet would miss the cache and pull.
Checked when a lock is given (`lint --lock`)."""

from __future__ import annotations

from collections.abc import Iterator

from kiln import refs
from kiln.lint.charts import classify
from kiln.lint.context import Hit, LintContext
from kiln.lock import node_digests

ID = "chart-digest-mismatch"
LEVEL = "error"


def check(ctx: LintContext) -> Iterator[Hit]:
    if ctx.lock is None:
        return
    for found in ctx.chart_refs:
        try:
            digest = refs.parse(found.text).digest
        except refs.ReferenceError:
            continue
        match = classify(found.text, ctx.images, ctx.env.registry)
        if digest is None or match.kind != "declared" or match.image is None:
            continue
        entries = [i for i in ctx.lock.images
                   if i.name == match.image.name and i.ref == match.image.ref]
        if not entries:
            continue  # not baked under this ref yet: nothing to compare with
        # each platform's nodes hold their own manifest digest: a pin must be every one's
        missing = [i for i in entries if digest not in node_digests(i)]
        if missing:
            held = ", ".join(f"{d} ({i.platform})" for i in missing for d in node_digests(i))
            yield Hit(found.digest_at or found.at,
                      f"{found.text!r} pins {digest}, but nodes hold {match.image.ref!r} as "
                      f"{held or 'no digest'} (the lock's): kubelet would miss the node cache "
                      "and pull", found)
