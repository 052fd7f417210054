"""A pull source recompressed: the explicit opt-in (an image's `recompress: true`, or the
environment's `compression: pulls: recompress`).

skopeo copies the platform's manifest with the environment's compression instead of as
served: the layers, and so the manifest digest, become kiln's. The config stays the
upstream's (the same image ID) when the upstream manifest is OCI; a Docker schema 2 manifest
is converted to OCI on the way (zstd layers exist only there), and skopeo rewrites its config
then: the image ID is kiln's too. Either way the copy must hold the upstream's layers
uncompressed (the config's `diff_ids`) for the upstream's platform, or the image fails.

Upstream digests and signatures then no longer name what the nodes hold: lint says so
(`recompressed-upstream`), config refuses a `verify: {key}` beside it, and no upstream
signature or index is recorded (`push` writes kiln's index for several platforms). Turning it
on or off for a locked image moves its ref (kiln/rebind.py: `--rebind`).

The lock's `inputs` of such an entry is the upstream manifest digest it was made from: a
rebake keeps the stored object while that and the environment's compression are the lock's,
and a pull pinned by digest is then not even looked up.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import copied, provenance, refs
from kiln import lock as lockfile
from kiln.errors import KilnError
from kiln.files import spool_dir
from kiln.lock import LockedImage
from kiln.manifests import is_index
from kiln.model import Compression, Image, PullSource
from kiln.ociarchive import blob_name
from kiln.ports import Upstream

if TYPE_CHECKING:
    from kiln.bake import Baker

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def locked(old: LockedImage | None, image: Image, comp: Compression,
           made_from: str | None) -> bool:
    """Is ``old`` this image recompressed the same way, from the upstream manifest
    ``made_from`` (None: from the pinned upstream the lock names, which no registry moves)?"""
    source = image.source
    if old is None or old.compression_level == lockfile.AS_SERVED or not isinstance(
            source, PullSource):
        return False
    same = ((old.ref, old.source, old.platform, old.compression, old.compression_level)
            == (image.ref, source.kind, image.platform, comp.algorithm, comp.level))
    if made_from is not None:
        return same and old.inputs == made_from
    return same and refs.parse(source.ref).digest is not None and old.upstream == source.ref


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        found = json.loads(data)
        if not isinstance(found, dict) or is_index(found):
            raise ValueError("not an image document")
    except ValueError as exc:
        raise KilnError(f"{what} is not an image document ({exc})") from None
    return found


def copy_config(layout: Path) -> tuple[str, dict[str, Any]]:
    """The config digest and config of the image in the OCI layout folder ``layout``."""
    digest = copied.config_digest((layout / blob_name(copied.layout_digest(layout))
                                   ).read_bytes())
    data = (layout / blob_name(digest)).read_bytes()
    if copied.digest_of(data) != digest:
        raise KilnError(f"the recompressed copy's config is not {digest}")
    return digest, _json(data, "the recompressed copy's config")


def check_same_image(upstream: Upstream, pinned: str, manifest: bytes, layout: Path) -> None:
    """The copy in ``layout`` is the upstream image ``pinned`` (whose manifest is
    ``manifest``): the same config, or (a Docker manifest converted to OCI) the same layers
    uncompressed and the same platform."""
    image_id, config = copy_config(layout)
    wanted = copied.config_digest(manifest)
    if image_id == wanted:
        return
    if _json(manifest, f"{pinned}").get("mediaType") == OCI_MANIFEST:
        raise KilnError(f"the recompressed copy of {pinned} is image {image_id}, not the "
                        f"upstream's {wanted}")
    raw = upstream.config(pinned)
    if copied.digest_of(raw) != wanted:
        raise KilnError(f"the registry served a config of {pinned} that is not {wanted}")
    theirs = _json(raw, f"the config of {pinned}")
    for what, mine, upstream_value in (
            ("layers (diff_ids)", config.get("rootfs"), theirs.get("rootfs")),
            ("platform", copied.platform_of(config), copied.platform_of(theirs))):
        if mine != upstream_value:
            raise KilnError(f"the recompressed copy of {pinned} has other {what} than the "
                            "upstream's")


def bake(baker: Baker, image: Image, source: PullSource) -> LockedImage:
    """The layers recompressed by skopeo with the environment's compression (see the module
    doc); the manifest is kiln's."""
    from kiln.bake import label

    comp = baker.env.compression
    old = baker.previous.image(image.name, image.platform) if baker.previous else None
    if old is not None and locked(old, image, comp, None) and baker.intact(
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
            if old is not None and locked(old, image, comp, served.manifest_digest) and \
                    baker.intact(old.key, old.sha256, old.size):
                return baker.unchanged(image, old, "its upstream, recompressed before")
            pinned = f"{refs.parse(source.ref).repository}@{served.manifest_digest}"
            manifest = raw if served.index_digest is None else baker.upstream.manifest(pinned)
            if copied.digest_of(manifest) != served.manifest_digest:
                raise KilnError(f"the registry served {pinned} as {copied.digest_of(manifest)}")
            baker.reporter.step(label(image), f"copying {source.ref}, recompressing "
                                              f"({comp.algorithm} -{comp.level})")
            baker.upstream.copy_image(pinned, layout, baker.cancel,
                                      compression=(comp.algorithm, comp.level))
            check_same_image(baker.upstream, pinned, manifest, layout)
        entry = baker.publish_copied(image, layout, copied.Served(
            copied.layout_digest(layout), None), None)
    # no upstream index: it names the upstream's manifests, not this one
    return provenance.recorded(replace(
        entry, compression_level=comp.level, inputs=served.manifest_digest, index_digest=None,
        index_key=None, index_size=None), None)
