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
from kiln.model import Image
from kiln.progress import human

EVERY_NODE = ""  # the "role" of images without roles, and of a fleet with no roles at all


@dataclass(frozen=True)
class Row:
    kind: str  # added | bumped | removed
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
    return old.ref == new.ref


def rows(old: Lock | None, new: Lock | tuple[Image, ...]) -> list[Row]:
    # keyed by name, with the platform where an image has several (kiln/platforms.py)
    old_images = old.images if old else ()
    new_images = new.images if isinstance(new, Lock) else new
    multi = platforms.several(old_images, new_images)
    before = {platforms.label(i, multi): i for i in old_images}
    after: dict[str, LockedImage | Image] = {platforms.label(i, multi): i for i in new_images}
    held = {(i.ref, i.image_id) for i in before.values()}

    def row(kind: str, name: str) -> Row:
        new = after[name]
        return Row(kind, name, before.get(name), new, isinstance(new, LockedImage)
                   and (new.ref, new.image_id) in held)

    out = [row("added", n) for n in sorted(after.keys() - before.keys())]
    out += [row("bumped", n) for n in sorted(after.keys() & before.keys())
            if not _same(before[n], after[n])]
    out += [Row("removed", n, before[n], None) for n in sorted(before.keys() - after.keys())]
    return out


def _roles(row: Row) -> tuple[str, ...]:
    """The roles whose nodes the row touches (old and new roles both: a move is a change)."""
    found: set[str] = set()
    for image in (row.old, row.new):
        if image is not None:
            found.update(image.roles or (EVERY_NODE,))
    return tuple(sorted(found))


def by_role(changes: list[Row], roles: set[str]) -> dict[str, list[Row]]:
    """Each role's rows: a row for every node goes to each named role (or to EVERY_NODE when
    the fleet has no roles)."""
    named = sorted(roles) or [EVERY_NODE]
    out: dict[str, list[Row]] = {role: [] for role in named}
    for row in changes:
        touched = _roles(row)
        for role in named:
            if EVERY_NODE in touched or role in touched:
                out[role].append(row)
    return out


def _cell(image: LockedImage | Image | None) -> str:
    if image is None:
        return "-"
    if isinstance(image, LockedImage):
        return f"`{image.ref}`<br>`{image.manifest_digest or image.image_id}`"
    return f"`{image.ref}`<br>(not baked yet)"


def markdown(env: str, registry: str, old: Lock | None, new: Lock | tuple[Image, ...],
             against: str) -> str:
    """The notes; ``against`` says what the old side is (a lock's path)."""
    changes = rows(old, new)
    roles = {r for lock in (old, new) if isinstance(lock, Lock)
             for i in lock.images for r in i.roles}
    if not isinstance(new, Lock):
        roles |= {r for i in new for r in i.roles}
    lines = [f"## Foundation images: {env} ({registry})", "",
             f"Against {against}. " + ("The new lock is baked: digests and sizes are final."
                                      if isinstance(new, Lock) else
                                      "Not baked yet: new digests and sizes come with the bake."),
             ""]
    if not changes:
        return "\n".join([*lines, "No image changes.", ""])
    for role, role_rows in by_role(changes, roles).items():
        known = [r.download for r in role_rows]
        total = (human(sum(k for k in known if k is not None))
                 if None not in known else "known after the bake")
        title = f"role `{role}`" if role else "every node"
        lines += [f"### {title}: {len(role_rows)} change(s), each node downloads {total}", ""]
        if not role_rows:
            lines += ["Nothing changes on these nodes.", ""]
            continue
        lines += ["| change | image | before | after | download |", "|---|---|---|---|---|"]
        for row in role_rows:
            size = "-" if row.download is None else human(row.download)
            lines.append(f"| {row.kind} | {row.name} | {_cell(row.old)} | {_cell(row.new)} "
                         f"| {size} |")
        lines.append("")
    lines += ["Removed images stay on nodes until kubelet's image GC reclaims them; nodes "
              "never delete an image a pod may use.", ""]
    return "\n".join(lines)


def read_lock(path_text: str) -> Lock:
    """The old side given by ``--since``: a lock file (any place, e.g. from git history)."""
    found = lockfile.read(Path(path_text))
    if found is None:
        raise UsageError(f"--since {path_text}: no such lock file")
    return found
