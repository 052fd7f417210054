"""What a bake would change (images.yaml against the lock), and what the store holds that no
lock names."""

from __future__ import annotations

from dataclasses import dataclass

from kiln import lock as lockfile
from kiln import platforms
from kiln.lock import Lock
from kiln.model import Environment, Image, PullSource, recompresses
from kiln.stores import BLOB_PREFIX, Entry, Store


@dataclass(frozen=True)
class Change:
    kind: str  # added | removed | retagged | rebuilt | recompressed | rebind | roles
    name: str
    detail: str


def image_changes(images: tuple[Image, ...], env: Environment, lock: Lock | None
                  ) -> list[Change]:
    # keyed by name, with the platform where an image has several (kiln/platforms.py)
    old_images = lock.images if lock else ()
    multi = platforms.several(old_images, images)
    locked = {platforms.label(i, multi): i for i in old_images}
    wanted = {platforms.label(i, multi): i for i in images}
    out: list[Change] = []
    for name in sorted(wanted.keys() - locked.keys()):
        out.append(Change("added", name, wanted[name].ref))
    for name in sorted(locked.keys() - wanted.keys()):
        out.append(Change("removed", name, locked[name].ref))
    for name in sorted(wanted.keys() & locked.keys()):
        new, old = wanted[name], locked[name]
        upstream = new.source.ref if isinstance(new.source, PullSource) else None
        if new.ref != old.ref:
            out.append(Change("retagged", name, f"{old.ref} -> {new.ref}"))
        elif new.source.kind != old.source or upstream != old.upstream:
            out.append(Change("rebuilt", name, f"source {old.source} {old.upstream or ''} -> "
                                               f"{new.source.kind} {upstream or ''}".strip()))
        elif new.platform != old.platform:
            out.append(Change("rebuilt", name, f"platform {old.platform} -> {new.platform}"))
        elif old.source == "pull" and recompresses(new, env) != (
                old.compression_level != lockfile.AS_SERVED):  # the opt-in turned on or off
            was = ("as served" if old.compression_level == lockfile.AS_SERVED
                   else f"-{old.compression_level}")
            out.append(Change("recompressed", name, f"{old.compression} {was} -> " + (
                f"{env.compression.algorithm} -{env.compression.level}"
                if recompresses(new, env) else "as served")))
        elif old.compression_level != lockfile.AS_SERVED and (
                env.compression.algorithm, env.compression.level) != (
                old.compression, old.compression_level):
            out.append(Change("recompressed", name, f"{old.compression} -{old.compression_level}"
                                                    f" -> {env.compression.algorithm} "
                                                    f"-{env.compression.level}"))
        if out and out[-1].name == name and out[-1].kind in ("rebuilt", "recompressed"):
            out.append(Change("rebind", name, f"{old.ref} is bound to "
                                              f"{old.manifest_digest or old.image_id}: new "
                                              "content under it is refused unless bake "
                                              f"--rebind {old.ref}"))
        if tuple(new.roles) != tuple(old.roles):
            out.append(Change("roles", name, f"{list(old.roles)} -> {list(new.roles)}"))
    return out


def lock_objects(store: Store, local: dict[str, str]) -> dict[str, list[str]]:
    """Every object a lock names -> who names it: the locks kept in the store (of any kiln
    version), and ``local`` (the local lock's keys and names)."""
    named: dict[str, list[str]] = {k: [v] for k, v in local.items()}
    for key in store.list(f"{store.prefix}locks/"):
        if key.endswith(".lock.json"):
            for obj, what in lockfile.object_names(store.get_bytes(key).decode(), key).items():
                named.setdefault(obj, []).append(f"{what} in {key}")
    return named


def referenced_keys(store: Store, extra: set[str]) -> set[str]:
    """Every object a lock names (see lock_objects); ``extra``: the local lock's keys."""
    return set(lock_objects(store, {k: "" for k in extra}))


@dataclass(frozen=True)
class StoreReport:
    unreferenced: dict[str, Entry]  # blobs no lock names
    missing: dict[str, list[str]]  # keys a lock names that the store does not hold -> who
    partial: dict[str, Entry]  # unfinished uploads


def survey(store: Store, local: dict[str, str]) -> StoreReport:
    """What the store holds against what the locks name."""
    named = lock_objects(store, local)
    blobs = store.entries(f"{store.prefix}{BLOB_PREFIX}")
    return StoreReport(
        unreferenced={k: e for k, e in blobs.items() if k not in named},
        missing={k: who for k, who in sorted(named.items()) if k not in blobs},
        partial=store.partials(),
    )


def prunable(entries: dict[str, Entry], grace: float, now: float) -> list[str]:
    """The keys older than ``grace`` seconds: younger ones may belong to a bake in flight
    whose lock is not written yet."""
    return sorted(k for k, e in entries.items() if now - e.modified >= grace)
