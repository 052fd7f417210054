"""Day 2: `push` seeds the real registry from the stored archives under exactly their refs,
digests kept; `verify-registry` proves it serves the lock's manifest digests and image IDs."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from kiln import provenance, refs, signing
from kiln.commands.common import load_with_lock
from kiln.commands.pushindex import push_several
from kiln.errors import EXIT_FAILED, EXIT_OK, KilnError
from kiln.lock import LockedImage
from kiln.publish import fetch_to
from kiln.registry import Registry, RegistryError, ServedImage
from kiln.stores import Store, open_store


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
    several = {i.name for i in lock.images if len(lock.platforms(i.name)) > 1}
    team_key = signing.signing_key()  # signs what kiln built, beside it in the registry
    store = open_store(env.store)
    registry = Registry(env.registry, env.registry_ca)
    report: list[dict[str, str]] = []
    failures: list[str] = []
    try:
        for name in sorted(several):  # one index under the ref: each platform its own
            entries = [i for i in lock.images if i.name == name]
            try:
                result = push_several(entries, store, registry, quiet)
                index = registry.digest(entries[0].ref)  # the upstream's, or kiln's
                for image in entries:
                    push_signature(image, store, registry, quiet, index)
                    sign_built(image, registry, team_key, quiet)
            except KilnError as exc:
                failures.append(f"image {name!r}: {exc}")
                result = "failed"
            report.append({"name": name, "ref": entries[0].ref, "result": result})
        for image in (i for i in lock.images if i.name not in several):
            try:
                if state_of(image, registry.served(image.ref, image.platform)) == "ok":
                    _say(f"kiln: {image.name}: {image.ref} already served as "
                         f"{image.manifest_digest}", quiet)
                    report.append({"name": image.name, "ref": image.ref, "result": "present"})
                    push_signature(image, store, registry, quiet)
                    sign_built(image, registry, team_key, quiet)
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
                push_signature(image, store, registry, quiet)
                sign_built(image, registry, team_key, quiet)
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


def signature_ref(image: LockedImage, index: str | None = None) -> str | None:
    """Where the registry keeps the upstream signature of what it serves under the ref (cosign's
    tag): the lock carries one for that manifest or, when the registry serves the upstream index
    byte for byte (``index``: the digest it serves), for that index."""
    if image.signature_key is None or image.signed is None:
        return None
    if image.signed not in (image.manifest_digest, index):
        return None  # it signs an index the registry does not serve under the ref
    return f"{refs.parse(image.ref).repository}:{provenance.signature_tag(image.signed)}"


def push_signature(image: LockedImage, store: Store, registry: Registry, quiet: bool,
                   index: str | None = None) -> None:
    """The upstream signature, byte for byte, beside what it signs: an in-cluster verifier
    (cosign, policy-controller, Kyverno) checks the very digest the registry serves under the
    ref (the platform manifest nodes hold, or the upstream index pushed as served)."""
    ref = signature_ref(image, index)
    if image.signature_key is not None and ref is None:
        _say(f"kiln: warning: {image.name}: its signature signs the upstream index "
             f"{image.signed}, which the registry does not serve under {image.ref} (the lock "
             "holds only some of its platforms): not pushed", quiet)
    if ref is None or registry.digest(ref) == image.signature:
        return
    assert image.signature_key is not None and image.signature_sha256 is not None
    _say(f"kiln: {image.name}: pushing its signature {ref}", quiet)
    with tempfile.TemporaryDirectory(prefix="kiln-push-") as work:
        archive = Path(work) / "signature.tar"
        with store.open_read(image.signature_key) as stream:
            fetch_to(stream, image.signature_sha256, archive)
        registry.push(archive, ref)
    if registry.digest(ref) != image.signature:
        raise RegistryError(f"after the push {ref} is not the signature {image.signature}")


def sign_built(image: LockedImage, registry: Registry, key: tuple[Path, Path | None] | None,
               quiet: bool) -> None:
    """With the team's key (KILN_SIGNING_KEY), an image kiln built gets a signature in
    cosign's convention beside it (an image copied from upstream keeps the upstream's)."""
    if key is None or image.source != "build" or image.manifest_digest is None:
        return
    repository = refs.parse(image.ref).repository
    ref = f"{repository}:{provenance.signature_tag(image.manifest_digest)}"
    if registry.digest(ref) is not None:
        return  # signed already (a signature is never replaced: a ref never moves)
    data = provenance.artifact(repository, image.manifest_digest,
                               lambda payload: signing.sign(payload, *key))
    _say(f"kiln: {image.name}: signing {image.ref} ({ref})", quiet)
    with tempfile.TemporaryDirectory(prefix="kiln-push-") as work:
        archive = Path(work) / "signature.tar"
        archive.write_bytes(data)
        registry.push(archive, ref)


def verify_registry_cmd(config_path: str, env_name: str | None, *, dist: str | None = None,
                        as_json: bool = False) -> int:
    """Every ref served with the lock's manifest digest and image ID; drift is `tag-moved`,
    `wrong-digest` or `missing`."""
    _, env, lock = load_with_lock(config_path, env_name, dist)
    registry = Registry(env.registry, env.registry_ca)
    found: list[dict[str, str | None]] = []
    several = {i.name for i in lock.images if len(lock.platforms(i.name)) > 1}
    try:
        for image in lock.images:
            served = registry.served(image.ref, image.platform)
            state = state_of(image, served)
            if image.name in several and served is not None and served.index_digest is None:
                state = "not-an-index"  # one platform's manifest under the ref: push again
            found.append({"name": image.name, "ref": image.ref, "platform": image.platform,
                          "state": state, "served_index": served.index_digest if served else None,
                          "want": image.image_id, "served": served.image_id if served else None,
                          "want_digest": image.manifest_digest,
                          "served_digest": served.manifest_digest if served else None})
            ref = signature_ref(image, served.index_digest if served else None)
            if ref is not None and found[-1]["state"] == "ok" and registry.digest(
                    ref) != image.signature:
                found[-1]["state"] = "missing-signature"
    finally:
        registry.close()
    if as_json:
        print(json.dumps(found, indent=2))
    else:
        for item in found:
            print(f"{'ok ' if item['state'] == 'ok' else 'BAD'} {item['state']:<12} "
                  f"{item['ref']}{_on(item, several)}{_why(item)}")
    return EXIT_OK if all(i["state"] == "ok" for i in found) else EXIT_FAILED


def _on(item: dict[str, str | None], several: set[str]) -> str:
    return f" ({item['platform']})" if item["name"] in several else ""


def _why(item: dict[str, str | None]) -> str:
    if item["state"] == "not-an-index":
        return ("  (serves one manifest, not an index of the lock's platforms: push "
                "again)")
    if item["state"] == "tag-moved":
        return f"  (serves image {item['served']}, the lock says {item['want']})"
    if item["state"] == "wrong-digest":
        return (f"  (serves manifest {item['served_digest']}, the lock says "
                f"{item['want_digest']}: push again)")
    if item["state"] == "missing-signature":
        return "  (its upstream signature is not beside it: push again)"
    return "  (the registry has no such ref)" if item["state"] == "missing" else ""
