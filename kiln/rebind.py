"""A ref never moves: a bake may not bind a ref the lock (or the registry) already binds to
other content, unless the user says so (`bake --rebind REF`), and then the lock's history
records it (core: the registry is asked through a function handed in).

"Other content" is another manifest digest or image ID under the same ``ref``: the next
release is a new tag. A rename (the same ref under another name) or a new tag is not a rebind.
Only the previous lock (and the registry) is known: a ref removed from images.yaml and added
again later with other bytes is a rebind only if the registry still serves the old one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kiln.errors import KilnError
from kiln.lock import Lock, LockedImage, Rebound

HISTORY_KEPT = 200  # the newest rebinds a lock remembers
RegistryLookup = Callable[[str, str], str | None]  # ref, platform -> served manifest digest


class RebindRefused(KilnError):
    """The bake would move refs; nothing was written (exit 1)."""


def identity(image: LockedImage) -> str:
    return image.manifest_digest or image.image_id


def rebinds(previous: Lock | None, entries: Iterable[LockedImage]) -> list[Rebound]:
    """The refs ``entries`` bind to other content than ``previous`` does."""
    before = {(i.ref, i.platform): i for i in previous.images} if previous else {}
    found = []
    for entry in entries:  # one entry per platform: each platform's manifest is bound
        old = before.get((entry.ref, entry.platform))
        if old is not None and (old.image_id != entry.image_id
                                or old.manifest_digest != entry.manifest_digest):
            found.append(Rebound(entry.ref, identity(old), identity(entry)))
    return sorted(found, key=lambda r: (r.ref, r.old))


def served_elsewhere(previous: Lock | None, entries: Iterable[LockedImage],
                     lookup: RegistryLookup) -> list[Rebound]:
    """Refs new to the lock that the registry already serves with other content (a lock lost,
    or an image pushed by hand): binding them here would move them there on the next push.
    ``lookup`` raises KilnError when the registry cannot be asked."""
    known = {(i.ref, i.platform) for i in previous.images} if previous else set()
    found = []
    for entry in entries:
        if (entry.ref, entry.platform) in known:
            continue
        served = lookup(entry.ref, entry.platform)
        if served is not None and served != entry.manifest_digest:
            found.append(Rebound(entry.ref, served, identity(entry)))
    return sorted(found, key=lambda r: r.ref)


def refuse(moved: list[Rebound], allowed: frozenset[str], where: str) -> None:
    """RebindRefused naming each ref ``moved`` that is not ``allowed``."""
    refused = [r for r in moved if r.ref not in allowed]
    if refused:
        lines = [f"{r.ref} is bound to {r.old} {where}; this bake made {r.new}"
                 for r in refused]
        raise RebindRefused(
            "a ref never moves: " + "; ".join(lines) + ". Give the new content a new tag, "
            "or move the ref on purpose with --rebind " + " --rebind ".join(
                r.ref for r in refused) + " (recorded in the lock's history); nothing was "
            "written")


def history(previous: Lock | None, moved: list[Rebound]) -> tuple[Rebound, ...]:
    """The lock's history: the previous one's, then this bake's rebinds, the newest kept."""
    kept = (*(previous.history if previous else ()), *moved)
    return kept[-HISTORY_KEPT:]


def check(previous: Lock | None, entries: list[LockedImage], allowed: frozenset[str],
          lookup: RegistryLookup | None, say: Callable[[str, str], None]) -> list[Rebound]:
    """Refuse (RebindRefused) a ref the lock or the registry binds to other content unless
    ``allowed`` names it; the moves allowed, for the lock's history. A registry that cannot
    be asked is said once (``say``), not an error: on day 1 there is none yet."""
    moved = rebinds(previous, entries)
    refuse(moved, allowed, "in the lock")
    if lookup is not None:
        try:
            served = served_elsewhere(previous, entries, lookup)
        except KilnError as exc:
            say("registry", f"not asked whether it serves these refs already ({exc})")
        else:
            refuse(served, allowed, "by the registry")
            moved += served
    for item in moved:
        say(item.ref, f"rebound on purpose: {item.old} -> {item.new}")
    return moved
