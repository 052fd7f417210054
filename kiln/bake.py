"""Bake: each image from its source into the store under its FQ ref.

`build:` images and `docker save` archives go through the engine (tagged with the ref,
exported, layers compressed: kiln's digests). `pull:` sources and OCI archives are copied as
they are served, without an engine (kiln/upstream.py, kiln/copied.py): their image ID and
manifest digest stay the upstream's (a pull source may opt in: kiln/recompressed.py).

An image whose ref, image ID, platform and compression match the previous lock, and whose
object is still in the store, is not exported again: a no-change rebake costs the engine's
build cache and one stat per image. A `build:` image whose inputs (kiln/buildinputs.py) are
the lock's is not even built: the engine's image IDs are not reproducible, the lock is the
truth. A pull source pinned by a digest the lock already holds is not even looked up (an
air-gapped rebake), and one whose registry serves the lock's manifest digest is not copied.
The lock is written only when every image published, so it never names an object that does
not exist.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

from kiln import buildinputs, copied, lookups, model, provenance, recompressed, refs, reuse
from kiln import lock as lockfile
from kiln import rebind as rebind_mod
from kiln.errors import KilnError
from kiln.files import spool_dir
from kiln.lock import Lock, LockedImage
from kiln.model import ArchiveSource, BuildSource, Config, Environment, Image, PullSource
from kiln.ports import Engine, SignatureChecks, Upstream
from kiln.progress import Reporter, human
from kiln.publish import Published, publish, publish_copy
from kiln.stores import Store, blob_key, lock_key

UPLOADS_BESIDE = 2  # images that may be uploading while `jobs` others compress


def label(image: Image) -> str:
    """The image's name in progress lines and failures: with its platform when it has several."""
    return image.name if len(image.platforms) <= 1 else f"{image.name} ({image.platform})"


class BakeError(KilnError):
    """One or more images did not publish; each failure is one line."""

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        self.failures = failures
        super().__init__("\n".join(f"image {name!r}: {why}" for name, why in failures))


@dataclass(frozen=True)
class BakeResult:
    lock: Lock
    uploaded: tuple[str, ...]  # names of the images whose object was uploaded
    reused: tuple[str, ...]  # names taken unchanged from the previous lock
    repaired: tuple[str, ...] = ()  # store keys whose bytes were not the lock's: stored again


class Baker:
    def __init__(self, config: Config, env: Environment, engine: Engine, store: Store,
                 reporter: Reporter, dist: Path, jobs: int = 2,
                 verify_store: bool = False, upstream: Upstream | None = None,
                 signatures: SignatureChecks | None = None,
                 rebind: frozenset[str] = frozenset(),
                 registry_lookup: rebind_mod.RegistryLookup | None = None) -> None:
        self.config = config
        self.rebind = rebind  # refs the user moves on purpose (bake --rebind REF)
        self.registry_lookup = registry_lookup  # what the registry serves (None: not asked)
        self.signatures = signatures  # checks upstream signatures (kiln/signing.py)
        self.env = env
        self.engine = engine  # asked only for builds and `docker save` archives
        self.upstream = lookups.manifests_once(upstream)  # copies pull sources as served
        self.store = store
        self.reporter = reporter
        self.lock_path = lockfile.lock_path(dist, env.name)
        self.jobs = max(1, jobs)
        # At most `jobs` images build/export/compress at once (the CPU-bound part); their
        # uploads run beside the next images' compression.
        self.cpu_slots = threading.BoundedSemaphore(self.jobs)
        self.cancel = threading.Event()
        try:
            self.previous = lockfile.read(self.lock_path)
        except lockfile.OldLock as exc:
            reporter.finish("lock", f"{exc}: every image is stored again")
            self.previous = None
        if self.previous is not None and self.previous.environment != env.name:
            self.previous = None
        self.uploaded: list[str] = []
        self.reused: list[str] = []
        self.repaired: list[str] = []
        self.created: list[str] = []  # keys this bake stored that were absent before
        self.created_lock = threading.Lock()
        self.ref_locks: dict[str, threading.Lock] = {}  # filled before the threads start
        self.verify_store = verify_store  # S3: read back objects without a server checksum

    # -- one image ----------------------------------------------------------------------------

    def resolve(self, image: Image) -> str:
        """Put the image into the engine under its FQ ref; return its image ID."""
        source = image.source
        if isinstance(source, BuildSource):
            self.reporter.step(label(image), f"building {source.context.name}")
            image_id = self.engine.build(source, image.ref, image.platform)
        else:
            assert isinstance(source, ArchiveSource)
            self.reporter.step(label(image), f"loading {source.path.name}")
            image_id = self.engine.load(source, image.ref)
        self.engine.tag(image_id, image.ref)
        return image_id

    def bake_image(self, image: Image) -> LockedImage:
        if self.copies(image):
            return self.bake_copied(image)
        # the engine tags each platform's build with the same ref: one platform at a time
        with self.ref_locks.setdefault(image.ref, threading.Lock()):
            return self.bake_engine_image(image)

    def bake_engine_image(self, image: Image) -> LockedImage:
        inputs = self.build_inputs(image)
        with self.cpu_slots:
            image_id = self.locked_build(image, inputs)
            if image_id is None:
                image_id = self.resolve(image)
                inputs = inputs or self.build_inputs(image)  # its base images are here now
            elif not self.engine_has(image_id, image):
                kept = self.reusable(image, image_id)
                if kept is None:  # neither the engine nor the store has it: build again
                    image_id = self.resolve(image)
                else:
                    self.reporter.finish(label(image), f"unchanged {image.ref} (inputs "
                                                     f"unchanged; {human(kept.size)})")
                    self.reused.append(label(image))
                    return replace(kept, inputs=inputs)
            info = self.engine.inspect(image.ref)
        if info is None or info.image_id != image_id:
            raise KilnError(f"the engine does not show {image.ref} as {image_id} after tagging")
        if info.platform != image.platform:
            raise KilnError(f"the engine made a {info.platform} image; images.yaml asks for "
                            f"{image.platform}")
        entry = self.reusable(image, image_id)
        if entry is not None:
            self.reporter.finish(label(image), f"unchanged {image.ref} ({human(entry.size)})")
            self.reused.append(label(image))
            return replace(entry, inputs=inputs)
        published = self.publish(image.ref, image_id, label(image), info.size)
        return LockedImage(
            name=image.name, ref=image.ref, image_id=image_id, platform=image.platform,
            sha256=published.sha256, size=published.size,
            uncompressed_size=published.uncompressed_size,
            compression=self.env.compression.algorithm,
            compression_level=self.env.compression.level, key=published.key,
            roles=image.roles, source=image.source.kind, inputs=inputs,
            manifest_digests=((image.platform, published.manifests[image.ref]),),
        )

    # -- unchanged builds (kiln/buildinputs.py) -----------------------------------------------

    def build_inputs(self, image: Image) -> str | None:
        if not isinstance(image.source, BuildSource):
            return None
        return buildinputs.digest(image.source, image.platform, self._engine_image_id)

    def _engine_image_id(self, ref: str) -> str | None:
        info = self.engine.inspect(ref)
        return None if info is None else info.image_id

    def locked_build(self, image: Image, inputs: str | None) -> str | None:
        """The locked image ID when this build's inputs are the lock's: nothing to build."""
        old = self.previous.image(image.name, image.platform) if self.previous else None
        if inputs is None or old is None or old.inputs != inputs:
            return None
        return old.image_id

    def engine_has(self, image_id: str, image: Image) -> bool:
        """Tag the locked image with its ref when the engine still has it (it is exported
        from there if the store lost it)."""
        info = self.engine.inspect(image_id)
        if info is None or info.image_id != image_id or info.platform != image.platform:
            return False
        self.engine.tag(image_id, image.ref)
        return True

    def reusable(self, image: Image, image_id: str) -> LockedImage | None:
        """The previous lock's entry when nothing about the stored object would change."""
        old = self.previous.image(image.name, image.platform) if self.previous else None
        comp = self.env.compression
        if (old is None or old.ref != image.ref or old.image_id != image_id
                or old.platform != image.platform or old.compression != comp.algorithm
                or old.compression_level != comp.level
                or not self.intact(old.key, old.sha256, old.size)):
            return None
        return replace(old, roles=image.roles, source=image.source.kind, upstream=None)

    def intact(self, key: str, sha256: str, size: int) -> bool:
        """Does the store still hold the locked object? A dir store's file is hashed again;
        S3 answers from its own checksum where it kept one (or, with verify_store, by reading
        the object back), else by size. An object with other bytes is noted as repaired: the
        bake stores it again."""
        if key != blob_key(self.store.prefix, sha256):
            return False  # not this store's content address for it: never touched, stored anew
        verdict = self.store.verify(key, sha256, size, deep=self.verify_store)
        if verdict is False and self.store.stat(key) is not None:
            # useless to every node (each refuses it by sha256): take it away, so that the
            # publish that follows stores the right bytes instead of finding "an equal size"
            self.store.delete(key)
            self.repaired.append(key)
        return verdict is not False

    def publish(self, ref: str, image_id: str, label: str, size_hint: int) -> Published:
        """Export ``ref`` as one object; the archive must name exactly it, as ``image_id``."""
        def progress(done: int) -> None:
            self.reporter.progress(label, done, size_hint)

        self.reporter.step(label, "saving")
        published = publish(self.engine.export(ref), self.store, self.env.compression, size_hint,
                            progress, self.cancel, self.cpu_slots, expect={ref: image_id})
        self.record(label, published)
        return published

    def record(self, label: str, published: Published) -> None:
        verb = "stored" if published.uploaded else "already stored"
        self.reporter.finish(label, f"{verb} {human(published.uncompressed_size)} -> "
                                    f"{human(published.size)} {published.key}")
        (self.uploaded if published.uploaded else self.reused).append(label)
        if published.uploaded:
            with self.created_lock:
                self.created.append(published.key)

    # -- images copied as served (pull sources, OCI archives): no engine ----------------------

    def copies(self, image: Image) -> bool:
        source = image.source
        if isinstance(source, ArchiveSource):
            if not source.path.is_file():
                raise KilnError(f"archive {source.path} does not exist")
            return copied.archive_kind(source.path) == "oci"
        return isinstance(source, PullSource)

    def bake_copied(self, image: Image) -> LockedImage:
        source = image.source
        if isinstance(source, PullSource) and model.recompresses(image, self.env):
            return recompressed.bake(self, image, source)  # the opt-in: kiln's manifest
        kept = reuse.pinned_in_lock(self.previous, image, self.env.verify, self.intact)
        if kept is not None:  # with a key: verified with this key when the lock was baked
            policy = (provenance.policy_for(source, self.env.verify)
                      if isinstance(source, PullSource) else None)
            kept = kept if policy is not None and policy.checked else provenance.recorded(
                kept, None)
            return self.unchanged(image, kept, "its pinned digest is the lock's")
        verified = None
        if self.upstream is None:
            raise KilnError("no upstream client to copy images with")
        with tempfile.TemporaryDirectory(prefix="kiln-copy-", dir=spool_dir()) as work:
            layout = Path(work) / "layout"
            with self.cpu_slots:
                if isinstance(source, PullSource):
                    self.reporter.step(label(image), f"resolving {source.ref}")
                    raw = self.upstream.manifest(copied.lookup(source.ref))
                    served = copied.served(raw, source.ref, image.platform)
                    verified = self.check_signature(image, source, served, Path(work))
                    index = copied.index_to_name(raw, served, image.platforms)
                    kept = reuse.reusable_copy(self.previous, image, served.manifest_digest,
                                               served.index_digest, bool(index), self.intact)
                    if kept is None:
                        self.reporter.step(label(image), f"copying {source.ref}")
                        repository = refs.parse(source.ref).repository
                        self.upstream.copy_image(f"{repository}@{served.manifest_digest}",
                                                 layout, self.cancel)
                        if copied.layout_digest(layout) != served.manifest_digest:
                            raise KilnError(f"the copy of {source.ref} is "
                                            f"{copied.layout_digest(layout)}, not "
                                            f"{served.manifest_digest}")
                else:
                    assert isinstance(source, ArchiveSource)
                    self.reporter.step(label(image), f"copying {source.path.name}")
                    self.upstream.copy_archive(source.path, layout, self.cancel,
                                               image.platform)
                    served, raw = copied.Served(copied.layout_digest(layout), None), b""
                    index = None
                    kept = reuse.reusable_copy(self.previous, image, served.manifest_digest,
                                               None, False, self.intact)
            kept = (self.publish_copied(image, layout, served, index) if kept is None else
                    self.unchanged(image, kept, "the lock's manifest digest"))
            stored = self.keep(raw) if served.index_digest else None  # push serves it again
            return provenance.recorded(replace(
                kept, index_digest=served.index_digest, index_key=stored and stored[0],
                index_size=stored and stored[2]), verified)

    def check_signature(self, image: Image, source: PullSource, served: copied.Served,
                        work: Path) -> provenance.Verified | None:
        """A policy's upstream signature verifies before any copy (else NotVerified: fails)."""
        policy = provenance.policy_for(source, self.env.verify)
        if policy is None or not policy.checked:
            return None
        if self.upstream is None or self.signatures is None:
            raise KilnError("no signature checker to verify upstream signatures with")
        self.reporter.step(image.name, f"checking the signature of {source.ref}")
        digests = tuple(d for d in (served.index_digest, served.manifest_digest) if d)
        verified = provenance.verify_pull(self.upstream, refs.parse(source.ref).repository,
                                          digests, policy, self.signatures, work,
                                          self.cancel)
        assert verified.layout is not None
        # small: the store keeps it beside the image
        return replace(verified, stored=self.keep(provenance.archive(verified.layout)))

    def keep(self, data: bytes) -> tuple[str, str, int]:
        """A small blob (a signature, an index) in the store, as is: key, sha256, size."""
        sha256 = hashlib.sha256(data).hexdigest()
        key = blob_key(self.store.prefix, sha256)
        if not self.intact(key, sha256, len(data)):
            self.store.put_bytes(key, data)
        return key, sha256, len(data)

    def unchanged(self, image: Image, kept: LockedImage, why: str) -> LockedImage:
        self.reporter.finish(label(image), f"unchanged {image.ref} ({why}; {human(kept.size)})")
        self.reused.append(label(image))
        source = image.source
        return replace(kept, roles=image.roles,
                       upstream=source.ref if isinstance(source, PullSource) else None)

    def publish_copied(self, image: Image, layout: Path, served: copied.Served,
                       index: bytes | None) -> LockedImage:
        """Store the copy; ``index``: the upstream index its object names for nodes."""
        size_hint = sum(p.stat().st_size for p in layout.rglob("*") if p.is_file())

        def progress(done: int) -> None:
            self.reporter.progress(label(image), done, size_hint)

        self.reporter.step(label(image), "storing")
        published, found = publish_copy(layout, image.ref, image.platform, self.store, size_hint,
                                        progress, self.cancel, index)
        self.record(label(image), published)
        source = image.source
        return LockedImage(
            name=image.name, ref=image.ref, image_id=found.image_id, platform=image.platform,
            sha256=published.sha256, size=published.size,
            uncompressed_size=published.uncompressed_size, compression=found.compression,
            compression_level=lockfile.AS_SERVED, key=published.key, roles=image.roles,
            source=source.kind,
            upstream=source.ref if isinstance(source, PullSource) else None,
            manifest_digests=((image.platform, found.manifest_digest),),
            index_digest=served.index_digest,
            index_named=index is not None if served.index_digest else None)

    # -- the whole bake -----------------------------------------------------------------------

    def run(self) -> BakeResult:
        self.store.check()
        images = self.config.per_platform(self.env)
        self.ref_locks = {image.ref: threading.Lock() for image in images}
        self.registry_lookup = lookups.asked_early(  # answered while the images copy
            self.previous, [(i.ref, i.platform) for i in images], self.registry_lookup)
        try:
            entries = self._parallel([(label(image), functools.partial(self.bake_image, image))
                                      for image in images])
            moved = rebind_mod.check(self.previous, entries, self.rebind, self.registry_lookup,
                                     self.reporter.finish)
            new = Lock(environment=self.env.name, registry=self.env.registry,
                       images=tuple(sorted(entries, key=lockfile.entry_key)),
                       store=self.store.facts(),
                       history=rebind_mod.history(self.previous, moved))
            lockfile.write(self.lock_path, new)
        except (KeyboardInterrupt, rebind_mod.RebindRefused):  # before the lock: nothing
            self._drop_created()                               # names what it stored
            raise
        self.store.put_bytes(lock_key(self.store.prefix, self.env.name),
                             lockfile.to_json(new).encode())
        return BakeResult(new, tuple(self.uploaded), tuple(self.reused), tuple(self.repaired))

    def _drop_created(self) -> None:
        """Take away the objects this bake created (their keys were absent before): an
        interrupted bake leaves the store as it was, also when the interrupt landed just after
        an upload completed. Best effort: what stays is complete, and `diff --prune` takes it."""
        with self.created_lock:
            keys, self.created = self.created, []
        named: set[str] = set()
        with contextlib.suppress(OSError, KilnError):  # interrupted just after the lock landed
            named = lockfile.object_keys(self.lock_path.read_text(), str(self.lock_path))
        for key in keys:
            if key not in named:
                with contextlib.suppress(Exception):
                    self.store.delete(key)

    def _parallel(self, tasks: list[tuple[str, Callable[[], LockedImage]]]) -> list[LockedImage]:
        """Run the per-image tasks ``jobs`` at a time; collect every failure, not just one."""
        failures: list[tuple[str, str]] = []
        results: list[LockedImage] = []
        pool = ThreadPoolExecutor(self.jobs + UPLOADS_BESIDE, thread_name_prefix="kiln-bake")
        futures: dict[Future[LockedImage], str] = {}
        try:
            futures = {pool.submit(task): name for name, task in tasks}
            wait(futures)
        except BaseException:
            self.cancel.set()  # Ctrl-C: running writers abort, queued images never start
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        for future, name in futures.items():
            exc = future.exception()
            if exc is None:
                results.append(future.result())
            elif isinstance(exc, KilnError):
                self.reporter.fail(name, str(exc))
                failures.append((name, str(exc)))
            else:
                raise exc
        if failures:
            raise BakeError(sorted(failures))
        return results
