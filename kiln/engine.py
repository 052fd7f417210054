"""The Docker engine edge: build, pull, load, tag, inspect and export, through the docker SDK.

Talks to the engine at DOCKER_HOST (default: the local socket). Each thread gets its own
client: the SDK's HTTP session is not meant to be shared across threads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from kiln import refs
from kiln.model import ArchiveSource, BuildSource, PullSource
from kiln.ports import EngineError, ImageInfo

EXPORT_CHUNK = 1 << 20


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


class DockerEngine:
    def __init__(self, base_url: str | None = None) -> None:
        self.base_url = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        self._local = threading.local()

    @property
    def client(self) -> docker.DockerClient:
        client = getattr(self._local, "client", None)
        if client is None:
            try:
                client = docker.DockerClient(base_url=self.base_url, timeout=600)
                client.ping()
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                raise EngineError(f"cannot reach the Docker engine at {self.base_url}: "
                                  f"{_one_line(str(exc))}") from None
            self._local.client = client
        return client

    def check(self) -> None:
        """Raise EngineError when no engine answers."""
        _ = self.client

    def build(self, source: BuildSource, ref: str, platform: str) -> str:
        if not (source.context / source.dockerfile).is_file():
            raise EngineError(f"no {source.dockerfile} in build context {source.context}")
        try:
            image, _ = self.client.images.build(
                path=str(source.context), dockerfile=source.dockerfile, tag=ref,
                buildargs=dict(source.args) or None, target=source.target, platform=platform,
                rm=True, forcerm=True,
            )
        except docker.errors.BuildError as exc:
            raise EngineError(f"build failed: {_one_line(exc.msg)}") from None
        except docker.errors.APIError as exc:
            raise EngineError(f"build failed: {_one_line(exc.explanation or str(exc))}") from None
        return str(image.id)

    def pull(self, source: PullSource, platform: str) -> str:
        upstream = refs.parse(source.ref)
        # Pull by digest when pinned (the tag is informative only), else by tag.
        wanted = f"{upstream.repository}@{upstream.digest}" if upstream.digest else source.ref
        repository, tag = (wanted, None) if upstream.digest else (
            upstream.repository, upstream.tag or "latest")
        if upstream.digest:
            # Pinned and already here: no registry needed (an air-gapped rebake).
            present = self.inspect(wanted)
            if present is not None:
                return present.image_id
        try:
            image = self.client.images.pull(repository, tag=tag, platform=platform)
        except docker.errors.APIError as exc:
            raise EngineError(f"pull of {source.ref} failed: "
                              f"{_one_line(exc.explanation or str(exc))}") from None
        if upstream.digest:
            digests = {str(refs.parse(d).digest) for d in image.attrs.get("RepoDigests", [])}
            if upstream.digest not in digests:
                raise EngineError(f"pull of {source.ref}: the engine got {sorted(digests)}, "
                                  f"not the pinned {upstream.digest}")
        return str(image.id)

    def load(self, source: ArchiveSource, ref: str) -> str:
        """Load the archive's one image and tag it ``ref``; return its image ID."""
        path = source.path
        if not path.is_file():
            raise EngineError(f"archive {path} does not exist")
        kind = archive_kind(path)
        if kind == "oci":
            return self._load_oci(path, ref)
        try:
            with path.open("rb") as data:
                loaded = self.client.images.load(data)
        except docker.errors.APIError as exc:
            raise EngineError(f"load of {path} failed: {_one_line(exc.explanation or str(exc))}"
                              ) from None
        ids = {image.id for image in loaded}
        if len(ids) != 1:
            raise EngineError(f"archive {path} holds {len(ids)} images; kiln needs exactly one")
        image_id = str(ids.pop())
        self.tag(image_id, ref)
        return image_id

    def _load_oci(self, path: Path, ref: str) -> str:
        """An OCI archive: docker 20.10 cannot load it, skopeo copies it into the engine."""
        if shutil.which("skopeo") is None:
            raise EngineError(f"{path} is an OCI archive: install skopeo to load it")
        argv = ["skopeo", "copy", "--quiet", "--dest-daemon-host", self.base_url,
                f"oci-archive:{path}", f"docker-daemon:{ref}"]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise EngineError(f"load of OCI archive {path} failed: {_one_line(done.stderr)}")
        info = self.inspect(ref)
        if info is None:
            raise EngineError(f"load of OCI archive {path}: the engine does not show {ref}")
        return info.image_id

    def tag(self, image_id: str, ref: str) -> None:
        name = refs.parse(ref)  # name:tag (images.yaml refs carry no digest)
        try:
            self.client.api.tag(image_id, name.repository, name.tag or refs.DEFAULT_TAG,
                                force=True)
        except docker.errors.APIError as exc:
            raise EngineError(f"tag {ref} failed: {_one_line(exc.explanation or str(exc))}"
                              ) from None

    def inspect(self, ref: str) -> ImageInfo | None:
        try:
            attrs: dict[str, Any] = self.client.api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as exc:
            raise EngineError(f"inspect {ref} failed: {_one_line(exc.explanation or str(exc))}"
                              ) from None
        platform = f"{attrs.get('Os', 'linux')}/{attrs.get('Architecture', 'amd64')}"
        if attrs.get("Variant"):
            platform += f"/{attrs['Variant']}"
        return ImageInfo(
            image_id=str(attrs["Id"]), size=int(attrs.get("Size") or 0), platform=platform,
            repo_tags=tuple(attrs.get("RepoTags") or ()),
            repo_digests=tuple(attrs.get("RepoDigests") or ()),
        )

    def export(self, ref: str) -> Iterator[bytes]:
        """`docker save REF` as a stream: a named archive, its RepoTags entry the ref."""
        api = self.client.api
        try:
            response = api._get(api._url("/images/get"), params={"names": [ref]}, stream=True)
            api._raise_for_status(response)
        except docker.errors.APIError as exc:
            raise EngineError(f"export of {ref} failed: "
                              f"{_one_line(exc.explanation or str(exc))}") from None
        try:
            yield from response.iter_content(EXPORT_CHUNK, decode_unicode=False)
        except requests.exceptions.RequestException as exc:
            raise EngineError(f"export of {ref} broke off: {exc}") from None
        finally:
            response.close()


def archive_kind(path: Path) -> str:
    """``docker`` for a docker-save archive (manifest.json), ``oci`` for an OCI layout."""
    try:
        with tarfile.open(path) as tar:
            names = set()
            for member in tar:
                names.add(member.name.removeprefix("./"))
                if "manifest.json" in names:
                    return "docker"
            if "index.json" in names and "oci-layout" in names:
                return "oci"
    except (tarfile.TarError, OSError) as exc:
        raise EngineError(f"archive {path} is not a readable tar file: {exc}") from None
    raise EngineError(f"archive {path} is neither a docker-save nor an OCI archive")

