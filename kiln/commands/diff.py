"""`kiln diff`: what a bake would change; objects no lock references (`--prune --yes`)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from kiln import lock as lockfile
from kiln.diff import image_changes, referenced_keys, unreferenced
from kiln.errors import EXIT_OK, UsageError
from kiln.progress import human
from kiln.project import Project
from kiln.stores import open_store


def diff_cmd(config_path: str, env_name: str | None, *, prune: bool = False, yes: bool = False,
             as_json: bool = False, dist: str | None = None) -> int:
    if yes and not prune:
        raise UsageError("--yes goes with --prune")
    project = Project.load(config_path, env_name, dist)
    config, env, path = project.config, project.env, project.lock_path
    try:
        lock = project.read_lock()
    except lockfile.OldLock as exc:  # every image is stored again; its objects stay named
        print(f"kiln: {exc}", file=sys.stderr)
        lock = None
    extra = lockfile.object_keys(path.read_text(), str(path)) if path.exists() else set()
    changes = image_changes(config.images_for(env), env, lock)
    store = open_store(env.store)
    try:
        orphans = unreferenced(store, extra)
        deleted: list[str] = []
        if prune and yes:
            named = referenced_keys(store, extra)  # again, right before deleting
            for key in sorted(orphans):
                if key not in named:
                    store.delete(key)
                    deleted.append(key)
    finally:
        store.close()
    if as_json:
        print(json.dumps({"changes": [asdict(c) for c in changes],
                          "unreferenced": orphans, "deleted": deleted}, indent=2))
        return EXIT_OK
    for change in changes:
        print(f"{change.kind:<13} {change.name}: {change.detail}")
    if not changes:
        print(f"no image changes: a bake of {env.name} would rewrite the same lock"
              + (" (no lock yet)" if lock is None else ""))
    total = sum(orphans.values())
    if orphans:
        print(f"{len(orphans)} objects ({human(total)}) in the store no lock names")
        for key in sorted(orphans):
            print(f"  {'deleted' if key in deleted else 'unreferenced'} {key}")
        if prune and not yes:
            print("kiln: --prune lists only: add --yes to delete them", file=sys.stderr)
    return EXIT_OK
