"""How nodes reach the store's objects: a plain base URL, S3 presigned GETs, or curl's SigV4
with read-only credentials. Render asks a Locator for each object's URL and the data-file
settings it needs; presigning goes through the S3 edge only when asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

from kiln.errors import EXIT_INVALID, KilnError
from kiln.model import Environment, S3Store


class RenderError(KilnError):
    pass


class GoldenCredentialsError(RenderError):
    """Long-lived credentials would be baked into a golden image without the user's consent."""

    exit_code = EXIT_INVALID


GOLDEN_FLAG = "--allow-credentials-in-golden-image"


def golden_credentials_refusal(env: Environment) -> str | None:
    """Why rendering ``env`` would bake S3 credentials into a golden image, or None."""
    store = env.store
    if env.packer_sources and isinstance(store, S3Store) and store.url_mode == "sigv4":
        return (f"environment {env.name!r}: url_mode sigv4 with Packer sources would bake S3 "
                "credentials into the golden image (every copy and snapshot of it carries "
                "them): use url_mode presigned or plain for golden images, or pass "
                f"{GOLDEN_FLAG} to accept that")
    return None


# -- how nodes reach the objects ------------------------------------------------------------------


class Locator(Protocol):
    # secret: long-lived credentials (sigv4): said loudly. private: the URLs or settings are
    # credentials of any kind (a presigned URL's signature and session token too): every file
    # holding them is written 0600.
    secret: bool
    private: bool

    def url(self, key: str) -> str: ...

    def settings(self) -> list[tuple[str, str]]: ...


@dataclass
class PlainLocator:
    """An HTTP(S) base URL: nginx, an artifact server, an anonymous-read bucket."""

    base: str
    secret: bool = False
    private: bool = False

    def url(self, key: str) -> str:
        return self.base.rstrip("/") + "/" + key

    def settings(self) -> list[tuple[str, str]]:
        return []


@dataclass
class PresignedLocator:
    """S3 presigned GETs, valid for the store's ttl; the credentials stay on this machine."""

    client: Any
    bucket: str
    ttl: int
    secret: bool = False
    private: bool = True  # whoever reads a presigned URL can fetch with it until it expires

    def url(self, key: str) -> str:
        return str(self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.ttl))

    def settings(self) -> list[tuple[str, str]]:
        return []


@dataclass
class SigV4Locator:
    """curl --aws-sigv4 with read-only credentials written into the data file: a secret."""

    endpoint: str
    bucket: str
    region: str
    user: str
    token: str | None
    secret: bool = True
    private: bool = True

    def url(self, key: str) -> str:
        return f"{self.endpoint.rstrip('/')}/{self.bucket}/{key}"

    def settings(self) -> list[tuple[str, str]]:
        out = [("sigv4", f"aws:amz:{self.region}:s3"), ("sigv4_user", self.user)]
        if self.token:
            out.append(("sigv4_token", self.token))
        return out


def missing_url(env: Environment) -> str | None:
    """Why nodes could not be told where the objects are, or None when they can."""
    store = env.store
    if not isinstance(store, S3Store) and not store.url:
        return (f"environment {env.name!r}: the dir store needs a url (the HTTP base the "
                "nodes fetch from) to render")
    if isinstance(store, S3Store) and store.url_mode == "plain" and not store.url:
        return f"environment {env.name!r}: url_mode plain needs the store's url"
    return None


def locator_for(env: Environment, environ: dict[str, str] | None = None,
                client: Any = None) -> Locator:
    store = env.store
    environ = dict(os.environ) if environ is None else environ
    missing = missing_url(env)
    if missing:
        raise RenderError(missing)
    if not isinstance(store, S3Store) or store.url_mode == "plain":
        assert store.url is not None
        return PlainLocator(store.url)
    if store.url_mode == "presigned":
        if client is None:
            from kiln.stores import s3_client  # the S3 edge, loaded only for presigning

            client = s3_client(store)
        return PresignedLocator(client, store.bucket, store.ttl_seconds)
    key, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        raise RenderError("url_mode sigv4 writes read-only credentials for the nodes: set "
                          "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (read-only!) to render")
    endpoint = store.endpoint or f"https://s3.{store.region or 'us-east-1'}.amazonaws.com"
    return SigV4Locator(endpoint, store.bucket, store.region or "us-east-1", f"{key}:{secret}",
                        environ.get("AWS_SESSION_TOKEN"))
