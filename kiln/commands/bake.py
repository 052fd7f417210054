"""`kiln bake`: lint (refuse on errors), then build/pull/archive, save, compress, publish, lock."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator

from kiln import lint as lint_mod
from kiln import lookups, signing
from kiln.bake import Baker
from kiln.commands.render import check_golden_credentials, render_env
from kiln.errors import EXIT_FAILED, EXIT_OK, UsageError
from kiln.lock import to_json
from kiln.model import ArchiveSource, BuildSource
from kiln.ports import Engine, ImageInfo
from kiln.progress import reporter_for
from kiln.project import Project
from kiln.registry import Registry
from kiln.stores import lock_key, open_store
from kiln.upstream import SkopeoUpstream


def served_by(registry: Registry) -> Callable[[str, str], str | None]:
    """What the registry serves for a ref (its manifest digest), for the rebind check; each
    ref asked once, whatever the number of its platforms."""
    document = lookups.once(registry.manifest)

    def lookup(ref: str, platform: str) -> str | None:
        served = registry.served_from(ref, document(ref), platform)
        return None if served is None else served.manifest_digest
    return lookup


class EngineOnFirstUse:
    """The Docker engine, its SDK imported when first asked: a bake of pull sources and OCI
    archives, which needs no engine, does not load it (a tenth of a second of start-up)."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def _get(self) -> Engine:
        with self._lock:
            if self._engine is None:
                from kiln.engine import DockerEngine

                self._engine = DockerEngine()
            return self._engine

    def build(self, source: BuildSource, ref: str, platform: str) -> str:
        return self._get().build(source, ref, platform)

    def load(self, source: ArchiveSource, ref: str) -> str:
        return self._get().load(source, ref)

    def tag(self, image_id: str, ref: str) -> None:
        self._get().tag(image_id, ref)

    def inspect(self, ref: str) -> ImageInfo | None:
        return self._get().inspect(ref)

    def export(self, ref: str) -> Iterator[bytes]:
        return self._get().export(ref)


def bake(config_path: str, env_name: str | None, *, dist: str | None = None, jobs: int = 2,
         quiet: bool = False, as_json: bool = False,
         allow_credentials_in_golden_image: bool = False, verify_store: bool = False,
         rebind: tuple[str, ...] = (), offline: bool = False) -> int:
    project = Project.load(config_path, env_name, dist)
    config, env = project.config, project.env
    refs_here = {image.ref for image in config.images_for(env)}
    for ref in rebind:
        if ref not in refs_here:
            raise UsageError(f"--rebind {ref}: not a ref of environment {env.name} in "
                             f"{config.path}")
    check_golden_credentials(env, allow_credentials_in_golden_image)  # before any work
    if env.lock_public_key is not None and signing.signing_key() is None:
        raise UsageError(f"environment {env.name} trusts only a signed lock (lock_public_key "
                         f"{env.lock_public_key}): set {signing.KEY_VARIABLE} to the private "
                         "key's PEM file (and its passphrase file in "
                         f"{signing.PASSPHRASE_VARIABLE}); nothing was baked")
    findings = lint_mod.run(config, env)
    if findings and not (quiet and not lint_mod.has_errors(findings)):
        sys.stderr.write(lint_mod.format_text(findings))
    if lint_mod.has_errors(findings):
        sys.stderr.write("kiln: error: lint found errors; nothing was baked\n")
        return EXIT_FAILED
    reporter = reporter_for(quiet)
    store = open_store(env.store)
    registry = Registry(env.registry, env.registry_ca)
    # The engine connects on first use: a bake of pull sources and OCI archives needs none.
    baker = Baker(config, env, EngineOnFirstUse(), store, reporter, project.dist, jobs=jobs,
                  verify_store=verify_store, upstream=SkopeoUpstream(),
                  signatures=signing.Openssl(), rebind=frozenset(rebind),
                  registry_lookup=None if offline else served_by(registry))
    try:
        result = baker.run()
    finally:
        reporter.close()
        store.close()
        registry.close()
    signed = signing.sign_file(baker.lock_path, env.lock_public_key)
    if signed is not None:
        store = open_store(env.store)
        try:
            store.put_bytes(lock_key(store.prefix, env.name) + ".sig", signed.read_bytes())
        finally:
            store.close()
    for key in result.repaired:
        sys.stderr.write(f"kiln: warning: store object {key} did not hold the bytes the lock "
                         "names (sha256 differs): stored again\n")
    render_env(config, env, project.dist, quiet=quiet, after_bake=True,
               allow_credentials_in_golden_image=allow_credentials_in_golden_image,
               presign_client=getattr(store, "client", None))  # S3: the bake's own client
    if as_json:
        sys.stdout.write(to_json(result.lock))
    elif not quiet:
        summary = {"uploaded": len(result.uploaded), "unchanged": len(result.reused)}
        if result.repaired:
            summary["repaired"] = len(result.repaired)
        sys.stderr.write(f"kiln: baked {env.name}: {json.dumps(summary)} -> {baker.lock_path}\n")
    return EXIT_OK
