"""The Docker engine edge: build, load, tag, inspect and export, through the docker SDK.
(Pull sources never come here: bake copies them as served without an engine, kiln/upstream.py.)

Talks to the engine at DOCKER_HOST (default: the local socket). Each thread gets its own
client: the SDK's HTTP session is not meant to be shared across threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import requests.exceptions

from kiln import refs
from kiln.model import ArchiveSource, BuildSource
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

    def load(self, source: ArchiveSource, ref: str) -> str:
        """Load the `docker save` archive's one image and tag it ``ref``; return its image ID.
        (An OCI archive never comes here: bake copies it as it is, kiln/copied.py.)"""
        path = source.path
        if not path.is_file():
            raise EngineError(f"archive {path} does not exist")
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
