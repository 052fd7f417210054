"""Release notes for operators: what a bake changes on each role's nodes, as Markdown.

Two locks (the one in force and the one a bake wrote) give everything: per role, the images
added, bumped (same name, other content or ref) and removed, with old and new refs and manifest
digests, and the bytes each node of the role downloads (the objects of added and bumped images;
an image a node already holds is skipped by the importer). Without a new lock (before a
bake), images.yaml stands in for it: refs are known, digests and sizes only once baked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kiln import lock as lockfile
from kiln import platforms
from kiln.errors import UsageError
from kiln.lock import Lock, LockedImage
from kiln.model import Image, PullSource
from kiln.progress import human

EVERY_NODE = ""  # the "role" of images without roles, and of a fleet with no roles at all
OTHER_ROLES = "\x00other"  # nodes of a role no image names: they get the role-less images


@dataclass(frozen=True)
class Row:
    kind: str  # added | bumped | rebound (the same ref, other content: bake --rebind) | removed
    name: str
    old: LockedImage | None
    new: LockedImage | Image | None  # an Image: images.yaml's, not baked yet
    held: bool = False  # nodes already hold the new ref with its image ID: nothing to fetch

    @property
    def download(self) -> int | None:
        """Bytes a node of the role fetches for this row (None: not known before a bake)."""
        if self.kind == "removed" or self.held:
            return 0
        return self.new.size if isinstance(self.new, LockedImage) else None


def _same(old: LockedImage, new: LockedImage | Image) -> bool:
    if isinstance(new, LockedImage):
        return ((old.ref, old.image_id, old.manifest_digest, old.sha256)
                == (new.ref, new.image_id, new.manifest_digest, new.sha256))
    upstream = new.source.ref if isinstance(new.source, PullSource) else None
    return ((old.ref, old.platform, old.source, old.upstream)
            == (new.ref, new.platform, new.source.kind, upstream))


def _gets(image: LockedImage | Image, role: str) -> bool:
    """Does a node of ``role`` get ``image`` (the one role rule: no roles, every node)?"""
    if role == OTHER_ROLES:
        return not image.roles
    return not image.roles or role == EVERY_NODE or role in image.roles


def rows(old: Lock | None, new: Lock | tuple[Image, ...], role: str = EVERY_NODE) -> list[Row]:
    """What changes on a node of ``role``: an image moved to or from the role is added or
    removed there; an image a node of the role already holds (same ref and image ID, e.g. a
    rename) costs it nothing. Keyed by name, with the platform where an image has several
    (kiln/platforms.py)."""
    old_images = [i for i in (old.images if old else ()) if _gets(i, role)]
    new_images = [i for i in (new.images if isinstance(new, Lock) else new) if _gets(i, role)]
    multi = platforms.several(old_images, new_images)
    before = {platforms.label(i, multi): i for i in old_images}
    after: dict[str, LockedImage | Image] = {platforms.label(i, multi): i for i in new_images}
    held = {(i.ref, i.image_id) for i in before.values()}

    def row(kind: str, name: str) -> Row:
        new = after[name]
        return Row(kind, name, before.get(name), new, isinstance(new, LockedImage)
                   and (new.ref, new.image_id) in held)

    out = [row("added", n) for n in sorted(after.keys() - before.keys())]
    out += [row("rebound" if before[n].ref == after[n].ref else "bumped", n)
            for n in sorted(after.keys() & before.keys()) if not _same(before[n], after[n])]
    out += [Row("removed", n, before[n], None) for n in sorted(before.keys() - after.keys())]
    return out


def by_role(old: Lock | None, new: Lock | tuple[Image, ...], roles: set[str]
            ) -> dict[str, list[Row]]:
    """Each role's rows (EVERY_NODE's when the fleet has no roles; with roles, also those of
    nodes whose role no image names: an image moved to a role leaves them)."""
    named = [*sorted(roles), OTHER_ROLES] if roles else [EVERY_NODE]
    return {role: rows(old, new, role) for role in named}


def _cell(image: LockedImage | Image | None) -> str:
    if image is None:
        return "-"
    if isinstance(image, LockedImage):
        return f"`{image.ref}`<br>`{image.manifest_digest or image.image_id}`"
    return f"`{image.ref}`<br>(not baked yet)"


def markdown(env: str, registry: str, old: Lock | None, new: Lock | tuple[Image, ...],
             against: str) -> str:
    """The notes; ``against`` says what the old side is (a lock's path)."""
    roles = {r for lock in (old, new) if isinstance(lock, Lock)
             for i in lock.images for r in i.roles}
    if not isinstance(new, Lock):
        roles |= {r for i in new for r in i.roles}
    lines = [f"## Foundation images: {env} ({registry})", "",
             f"Against {against}. " + ("The new lock is baked: digests and sizes are final."
                                      if isinstance(new, Lock) else
                                      "Not baked yet: new digests and sizes come with the bake."),
             ""]
    changed = {role: found for role, found in by_role(old, new, roles).items() if found}
    if not changed:
        return "\n".join([*lines, "No image changes.", ""])
    for role, role_rows in changed.items():
        known = [r.download for r in role_rows]
        total = (human(sum(k for k in known if k is not None))
                 if None not in known else "known after the bake")
        title = ("nodes of any other role" if role == OTHER_ROLES else
                 f"role `{role}`" if role else "every node")
        lines += [f"### {title}: {len(role_rows)} change(s), each node downloads {total}", "",
                  "| change | image | before | after | download |", "|---|---|---|---|---|"]
        for row in role_rows:
            size = "-" if row.download is None else human(row.download)
            lines.append(f"| {row.kind} | {row.name} | {_cell(row.old)} | {_cell(row.new)} "
                         f"| {size} |")
        lines.append("")
    same = sorted(set(roles) - changed.keys())
    if same:
        lines += ["Nothing changes on nodes of role " + ", ".join(f"`{r}`" for r in same) + ".",
                  ""]
    lines += ["Removed images stay on nodes until kubelet's image GC reclaims them; nodes "
              "never delete an image a pod may use.", ""]
    return "\n".join(lines)


def read_lock(path_text: str, env: str) -> Lock:
    """The old side given by ``--since``: a lock file of environment ``env`` (any place, e.g.
    from git history)."""
    found = lockfile.read(Path(path_text))
    if found is None:
        raise UsageError(f"--since {path_text}: no such lock file")
    if found.environment != env:
        raise UsageError(f"--since {path_text}: a lock of environment {found.environment!r}, "
                         f"not {env!r}")
    return found
