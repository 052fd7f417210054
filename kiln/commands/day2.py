"""Day 2: `push` seeds the real registry from the stored archives under exactly their refs;
`verify-registry` proves it serves the lock's image IDs."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from kiln.commands.common import load_with_lock
from kiln.errors import EXIT_FAILED, EXIT_OK, KilnError
from kiln.publish import fetch_to
from kiln.registry import Registry, RegistryError
from kiln.stores import open_store


def _say(text: str, quiet: bool) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def push_cmd(config_path: str, env_name: str | None, *, dist: str | None = None,
             quiet: bool = False, as_json: bool = False) -> int:
    """Push every image of the lock that the registry does not already serve as locked."""
    _, env, lock = load_with_lock(config_path, env_name, dist)
    store = open_store(env.store)
    registry = Registry(env.registry, env.registry_ca)
    report: list[dict[str, str]] = []
    failures: list[str] = []
    try:
        for image in lock.images:
            try:
                if registry.image_id(image.ref, image.platform) == image.image_id:
                    _say(f"kiln: {image.name}: {image.ref} already served as {image.image_id}",
                         quiet)
                    report.append({"name": image.name, "ref": image.ref, "result": "present"})
                    continue
                _say(f"kiln: {image.name}: pushing {image.ref} from {image.key}", quiet)
                with tempfile.TemporaryDirectory(prefix="kiln-push-") as work:
                    archive = Path(work) / "image.tar"
                    with store.open_read(image.key) as stream:
                        fetch_to(stream, image.sha256, archive)
                    registry.push(archive, image.ref)
                served = registry.image_id(image.ref, image.platform)
                if served != image.image_id:
                    raise RegistryError(f"after the push {image.ref} is {served}, not "
                                        f"{image.image_id}")
                report.append({"name": image.name, "ref": image.ref, "result": "pushed"})
            except KilnError as exc:
                failures.append(f"image {image.name!r}: {exc}")
                report.append({"name": image.name, "ref": image.ref, "result": "failed"})
    finally:
        registry.close()
        store.close()
    if as_json:
        print(json.dumps(report, indent=2))
    for failure in failures:
        print(f"kiln: error: {failure}", file=sys.stderr)
    return EXIT_FAILED if failures else EXIT_OK


def verify_registry_cmd(config_path: str, env_name: str | None, *, dist: str | None = None,
                        as_json: bool = False) -> int:
    """Every ref served with the lock's image ID; drift is `tag-moved` or `missing`."""
    _, env, lock = load_with_lock(config_path, env_name, dist)
    registry = Registry(env.registry, env.registry_ca)
    found = []
    try:
        for image in lock.images:
            served = registry.image_id(image.ref, image.platform)
            state = ("ok" if served == image.image_id else
                     "missing" if served is None else "tag-moved")
            found.append({"name": image.name, "ref": image.ref, "state": state,
                          "want": image.image_id, "served": served})
    finally:
        registry.close()
    if as_json:
        print(json.dumps(found, indent=2))
    else:
        for item in found:
            extra = "" if item["state"] == "ok" else (
                f"  (serves {item['served']}, the lock says {item['want']})"
                if item["state"] == "tag-moved" else "  (the registry has no such ref)")
            print(f"{'ok ' if item['state'] == 'ok' else 'BAD'} {item['state']:<10} "
                  f"{item['ref']}{extra}")
    return EXIT_OK if all(i["state"] == "ok" for i in found) else EXIT_FAILED
