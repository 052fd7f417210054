"""Day 2: `push` seeds the real registry from the stored archives under exactly their refs,
digests kept; `verify-registry` proves it serves the lock's manifest digests and image IDs."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from kiln.commands.common import load_with_lock
from kiln.errors import EXIT_FAILED, EXIT_OK, KilnError
from kiln.lock import LockedImage
from kiln.publish import fetch_to
from kiln.registry import Registry, RegistryError, ServedImage
from kiln.stores import open_store


def _say(text: str, quiet: bool) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def state_of(image: LockedImage, served: ServedImage | None) -> str:
    """ok: the lock's manifest (and so its image ID); wrong-digest: the same image under
    another manifest (a digest-pinned pull misses it); tag-moved: another image; missing."""
    if served is None:
        return "missing"
    if served.image_id != image.image_id:
        return "tag-moved"
    return "ok" if served.manifest_digest == image.manifest_digest else "wrong-digest"


def push_cmd(config_path: str, env_name: str | None, *, dist: str | None = None,
             quiet: bool = False, as_json: bool = False) -> int:
    """Push every image of the lock that the registry does not already serve as locked."""
    _, env, lock = load_with_lock(config_path, env_name, dist)
    several = sorted({i.name for i in lock.images if len(lock.platforms(i.name)) > 1})
    if several:  # one tag per platform would leave the registry with the last one pushed
        raise KilnError(f"push: {', '.join(several)} has several platforms; pushing a "
                        "multi-platform index is not supported yet")
    store = open_store(env.store)
    registry = Registry(env.registry, env.registry_ca)
    report: list[dict[str, str]] = []
    failures: list[str] = []
    try:
        for image in lock.images:
            try:
                if state_of(image, registry.served(image.ref, image.platform)) == "ok":
                    _say(f"kiln: {image.name}: {image.ref} already served as "
                         f"{image.manifest_digest}", quiet)
                    report.append({"name": image.name, "ref": image.ref, "result": "present"})
                    continue
                _say(f"kiln: {image.name}: pushing {image.ref} from {image.key}", quiet)
                with tempfile.TemporaryDirectory(prefix="kiln-push-") as work:
                    archive = Path(work) / "image.tar"
                    with store.open_read(image.key) as stream:
                        fetch_to(stream, image.sha256, archive)
                    registry.push(archive, image.ref)
                served = registry.served(image.ref, image.platform)
                if state_of(image, served) != "ok":
                    raise RegistryError(
                        f"after the push {image.ref} is "
                        f"{served.manifest_digest if served else 'absent'}, not "
                        f"{image.manifest_digest}")
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
    """Every ref served with the lock's manifest digest and image ID; drift is `tag-moved`,
    `wrong-digest` or `missing`."""
    _, env, lock = load_with_lock(config_path, env_name, dist)
    registry = Registry(env.registry, env.registry_ca)
    found: list[dict[str, str | None]] = []
    try:
        for image in lock.images:
            served = registry.served(image.ref, image.platform)
            found.append({"name": image.name, "ref": image.ref,
                          "state": state_of(image, served),
                          "want": image.image_id, "served": served.image_id if served else None,
                          "want_digest": image.manifest_digest,
                          "served_digest": served.manifest_digest if served else None})
    finally:
        registry.close()
    if as_json:
        print(json.dumps(found, indent=2))
    else:
        for item in found:
            print(f"{'ok ' if item['state'] == 'ok' else 'BAD'} {item['state']:<12} "
                  f"{item['ref']}{_why(item)}")
    return EXIT_OK if all(i["state"] == "ok" for i in found) else EXIT_FAILED


def _why(item: dict[str, str | None]) -> str:
    if item["state"] == "tag-moved":
        return f"  (serves image {item['served']}, the lock says {item['want']})"
    if item["state"] == "wrong-digest":
        return (f"  (serves manifest {item['served_digest']}, the lock says "
                f"{item['want_digest']}: push again)")
    return "  (the registry has no such ref)" if item["state"] == "missing" else ""
