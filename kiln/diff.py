"""What a bake would change (images.yaml against the lock), and what the store holds that no
lock names."""

from __future__ import annotations

from dataclasses import dataclass

from kiln import lock as lockfile
from kiln.config import Environment, Image, PullSource
from kiln.lock import Lock
from kiln.stores import BLOB_PREFIX, Store


@dataclass(frozen=True)
class Change:
    kind: str  # added | removed | retagged | rebuilt | recompressed | roles
    name: str
    detail: str


def image_changes(images: tuple[Image, ...], env: Environment, lock: Lock | None
                  ) -> list[Change]:
    locked = {i.name: i for i in lock.images} if lock else {}
    wanted = {i.name: i for i in images}
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
        elif (env.compression.algorithm, env.compression.level) != (
                old.compression, old.compression_level):
            out.append(Change("recompressed", name, f"{old.compression} -{old.compression_level}"
                                                    f" -> {env.compression.algorithm} "
                                                    f"-{env.compression.level}"))
        if tuple(new.roles) != tuple(old.roles):
            out.append(Change("roles", name, f"{list(old.roles)} -> {list(new.roles)}"))
    return out


def referenced_keys(store: Store, extra: set[str]) -> set[str]:
    """Every object a lock names: the locks kept in the store (of any kiln version), and the
    keys given (the local lock's)."""
    keys = set(extra)
    for key in store.list(f"{store.prefix}locks/"):
        if key.endswith(".lock.json"):
            keys |= lockfile.object_keys(store.get_bytes(key).decode(), key)
    return keys


def unreferenced(store: Store, extra: set[str]) -> dict[str, int]:
    """Blobs in the store that no lock names (the candidates for --prune)."""
    named = referenced_keys(store, extra)
    return {k: v for k, v in store.list(f"{store.prefix}{BLOB_PREFIX}").items()
            if k not in named}
