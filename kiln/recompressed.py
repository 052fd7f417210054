"""A pull source recompressed: the explicit opt-in (an image's `recompress: true`, or the
environment's `compression: pulls: recompress`).

skopeo copies the platform's manifest with the environment's compression instead of as
served: the config (the image ID) stays the upstream's, but the layers and so the manifest
digest become kiln's. Upstream digests and signatures then no longer name what the nodes hold:
lint says so (`recompressed-upstream`), config refuses a `verify: {key}` beside it, and no
upstream signature or index is recorded (`push` writes kiln's index for several platforms).
Turning it on or off for a locked image moves its ref (kiln/rebind.py: `--rebind`).

A rebake keeps the stored object while the upstream's image ID and the environment's
compression are the lock's; a pull pinned by digest is then not even looked up.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from kiln import copied, provenance, refs
from kiln import lock as lockfile
from kiln.errors import KilnError
from kiln.files import spool_dir
from kiln.lock import LockedImage
from kiln.model import Compression, Image, PullSource

if TYPE_CHECKING:
    from kiln.bake import Baker


def locked(old: LockedImage | None, image: Image, source: PullSource, comp: Compression,
           image_id: str | None) -> bool:
    """Is ``old`` this image recompressed the same way (of ``image_id``; None: of the pinned
    upstream the lock names, which no registry can change)?"""
    if old is None or old.compression_level == lockfile.AS_SERVED:
        return False
    same = ((old.ref, old.source, old.platform, old.compression, old.compression_level)
            == (image.ref, source.kind, image.platform, comp.algorithm, comp.level))
    if image_id is not None:
        return same and old.image_id == image_id
    return same and refs.parse(source.ref).digest is not None and old.upstream == source.ref


def bake(baker: Baker, image: Image, source: PullSource) -> LockedImage:
    """The layers recompressed by skopeo with the environment's compression; the image ID is
    the upstream's (checked), the manifest kiln's."""
    from kiln.bake import label

    comp = baker.env.compression
    old = baker.previous.image(image.name, image.platform) if baker.previous else None
    if locked(old, image, source, comp, None) and old is not None and baker.intact(
            old.key, old.sha256, old.size):
        return baker.unchanged(image, old, "its pinned upstream, recompressed before")
    if baker.upstream is None:
        raise KilnError("no upstream client to copy images with")
    with tempfile.TemporaryDirectory(prefix="kiln-copy-", dir=spool_dir()) as work:
        layout = Path(work) / "layout"
        with baker.cpu_slots:
            baker.reporter.step(label(image), f"resolving {source.ref}")
            raw = baker.upstream.manifest(copied.lookup(source.ref))
            served = copied.served(raw, source.ref, image.platform)
            pinned = f"{refs.parse(source.ref).repository}@{served.manifest_digest}"
            image_id = copied.config_digest(
                raw if served.index_digest is None else baker.upstream.manifest(pinned))
            if locked(old, image, source, comp, image_id) and old is not None and \
                    baker.intact(old.key, old.sha256, old.size):
                return baker.unchanged(image, old, "its upstream image, recompressed before")
            baker.reporter.step(label(image), f"copying {source.ref}, recompressing "
                                              f"({comp.algorithm} -{comp.level})")
            baker.upstream.copy_image(pinned, layout, baker.cancel,
                                      compression=(comp.algorithm, comp.level))
        entry = baker.publish_copied(image, layout, copied.Served(
            copied.layout_digest(layout), None))
    if entry.image_id != image_id:
        raise KilnError(f"the recompressed copy of {source.ref} is image {entry.image_id}, "
                        f"not the upstream's {image_id}")
    # no upstream index: it names the upstream's manifests, not this one
    return provenance.recorded(replace(entry, compression_level=comp.level, index_digest=None,
                                       index_key=None, index_size=None), None)
