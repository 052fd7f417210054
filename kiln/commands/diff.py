"""`kiln diff`: what a bake would change; what the store holds that no lock names, what a
lock names that the store lost, and unfinished uploads (`--prune --yes` removes the old ones).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict

from kiln import lock as lockfile
from kiln import releasenotes
from kiln.diff import Change, StoreReport, image_changes, prunable, referenced_keys, survey
from kiln.errors import EXIT_FAILED, EXIT_OK, UsageError
from kiln.model import parse_duration
from kiln.progress import human
from kiln.project import Project
from kiln.stores import Store, open_store

DEFAULT_GRACE = "24h"


def grace_seconds(text: str) -> int:
    seconds = 0 if text.strip() == "0" else parse_duration(text)
    if seconds is None:
        raise UsageError(f"--grace {text!r}: expected a duration like 0, 90s, 30m, 24h or 7d")
    return seconds


def diff_cmd(config_path: str, env_name: str | None, *, prune: bool = False, yes: bool = False,
             as_json: bool = False, dist: str | None = None,
             grace: str = DEFAULT_GRACE) -> int:
    if yes and not prune:
        raise UsageError("--yes goes with --prune")
    grace_s = grace_seconds(grace)
    project = Project.load(config_path, env_name, dist)
    config, env, path = project.config, project.env, project.lock_path
    try:
        lock = project.read_lock()
    except lockfile.OldLock as exc:  # every image is stored again; its objects stay named
        print(f"kiln: {exc}", file=sys.stderr)
        lock = None
    local = ({k: f"{what} in {path}" for k, what in
              lockfile.object_names(path.read_text(), str(path)).items()}
             if path.exists() else {})
    changes = image_changes(config.per_platform(env), env, lock)
    store = open_store(env.store)
    try:
        report = survey(store, local)
        deleted = _prune(store, report, set(local), grace_s) if prune and yes else []
    finally:
        store.close()
    old = set(prunable(report.unreferenced, grace_s, time.time()))
    if as_json:
        print(json.dumps({
            "changes": [asdict(c) for c in changes],
            "unreferenced": {k: e.size for k, e in report.unreferenced.items()},
            "young": sorted(set(report.unreferenced) - old),
            "missing": report.missing, "partial": sorted(report.partial),
            "deleted": deleted}, indent=2))
    else:
        _print(env.name, lock is None, changes, report, old, deleted, grace, prune and not yes)
    return EXIT_FAILED if report.missing else EXIT_OK


def _prune(store: Store, report: StoreReport, local: set[str], grace: int) -> list[str]:
    """Delete the unreferenced objects and unfinished uploads older than ``grace``."""
    now = time.time()
    named = referenced_keys(store, local)  # again, right before deleting
    deleted: list[str] = []
    for key in prunable(report.unreferenced, grace, now):
        # its age again, right before deleting: a bake may have reused (touched) it since the
        # listing, and will name it in the lock it has not written yet
        written = store.modified(key)
        if key not in named and written is not None and time.time() - written >= grace:
            store.delete(key)
            deleted.append(key)
    for upload in prunable(report.partial, grace, now):
        store.drop_partial(upload)
        deleted.append(upload)
    return deleted


def _print(env: str, no_lock: bool, changes: list[Change], report: StoreReport, old: set[str],
           deleted: list[str], grace: str, listing_only: bool) -> None:
    for change in changes:
        print(f"{change.kind:<13} {change.name}: {change.detail}")
    if not changes:
        print(f"no image changes: a bake of {env} would rewrite the same lock"
              + (" (no lock yet)" if no_lock else ""))
    orphans = report.unreferenced
    if orphans:
        total = sum(e.size for e in orphans.values())
        print(f"{len(orphans)} objects ({human(total)}) in the store no lock names")
        for key in sorted(orphans):
            state = ("deleted" if key in deleted else "unreferenced" if key in old
                     else f"unreferenced, younger than {grace}: kept (a bake may be storing it)")
            print(f"  {state} {key}")
    for upload in sorted(report.partial):
        print(f"  {'deleted' if upload in deleted else 'unfinished upload'} {upload}")
    if listing_only and (orphans or report.partial):
        print("kiln: --prune lists only: add --yes to delete them", file=sys.stderr)
    for key, who in report.missing.items():
        print(f"kiln: error: {key} is missing from the store; named by {', '.join(who)}: "
              "nodes cannot fetch it (bake again to store it)", file=sys.stderr)


def notes_cmd(config_path: str, env_name: str | None, *, since: str | None,
              dist: str | None, markdown: bool) -> int:
    """`diff --format markdown [--since OLD]`: release notes; no store is read."""
    if not markdown:
        raise UsageError("--since goes with --format markdown (and not with --json or --prune)")
    project = Project.load(config_path, env_name, dist)
    lock = project.read_lock()
    path = project.lock_path
    if since is not None:
        if lock is None:
            raise UsageError(f"--since: there is no new lock at {path} to compare (bake first)")
        old = releasenotes.read_lock(since, project.env.name)
        print(releasenotes.markdown(project.env.name, project.env.registry, old, lock,
                                    f"`{since}`"), end="")
    else:
        images = project.config.per_platform(project.env)
        print(releasenotes.markdown(project.env.name, project.env.registry, lock, images,
                                    f"`{path}`" if lock else "no lock (first bake)"), end="")
    return EXIT_OK
