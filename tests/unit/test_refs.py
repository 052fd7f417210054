"""The reference corpus: distribution's grammar and containerd/kubelet normalisation."""

from __future__ import annotations

import pytest

from kiln import refs

D64 = "sha256:" + "a" * 64
D64B = "sha256:" + "0123456789abcdef" * 4

# (input, normalised form or None when invalid, fully qualified?)
CORPUS: list[tuple[str, str | None, bool]] = [
    # short names: containerd adds docker.io, library/ and :latest
    ("nginx", "docker.io/library/nginx:latest", False),
    ("nginx:1.25", "docker.io/library/nginx:1.25", False),
    ("nginx:latest", "docker.io/library/nginx:latest", False),
    ("repo/registry:latest", "docker.io/repo/registry:latest", False),
    ("repo/registry", "docker.io/repo/registry:latest", False),
    ("foundation/registry:v0.4.2", "docker.io/foundation/registry:v0.4.2", False),
    ("a/b/c:1", "docker.io/a/b/c:1", False),
    ("library/nginx:1", "docker.io/library/nginx:1", False),
    ("docker.io/nginx", "docker.io/library/nginx:latest", False),
    ("docker.io/nginx:1", "docker.io/library/nginx:1", False),
    ("docker.io/library/nginx", "docker.io/library/nginx:latest", False),
    ("docker.io/library/nginx:1.25", "docker.io/library/nginx:1.25", True),
    ("docker.io/bitnami/redis:7.2", "docker.io/bitnami/redis:7.2", True),
    ("index.docker.io/library/nginx:1", "docker.io/library/nginx:1", False),
    ("index.docker.io/nginx:1", "docker.io/library/nginx:1", False),
    # fully qualified: a dot, a port or localhost in the first component
    ("registry.example.com/foundation/registry:v0.4.2",
     "registry.example.com/foundation/registry:v0.4.2", True),
    ("registry.example.com/foundation/registry",
     "registry.example.com/foundation/registry:latest", False),
    ("registry.example.com/dex:v2.41.1", "registry.example.com/dex:v2.41.1", True),
    ("ghcr.io/dexidp/dex:v2.41.1", "ghcr.io/dexidp/dex:v2.41.1", True),
    ("quay.io/keycloak/keycloak:26.0.7", "quay.io/keycloak/keycloak:26.0.7", True),
    ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9", True),
    ("localhost/foo:1", "localhost/foo:1", True),
    ("localhost/foo", "localhost/foo:latest", False),
    ("localhost:5000/foo:1", "localhost:5000/foo:1", True),
    ("localhost:5000/a/b/c:v1", "localhost:5000/a/b/c:v1", True),
    ("myhost:5000/foo:1", "myhost:5000/foo:1", True),
    ("127.0.0.1:5000/foo:1", "127.0.0.1:5000/foo:1", True),
    ("10.0.0.1/foo/bar:2", "10.0.0.1/foo/bar:2", True),
    ("[::1]:5000/foo:v1", "[::1]:5000/foo:v1", True),
    ("[2001:db8::1]/foo:v1", "[2001:db8::1]/foo:v1", True),
    ("[2001:db8::1]:443/team/app:1.0", "[2001:db8::1]:443/team/app:1.0", True),
    ("Registry.Example.com/foo:1", "Registry.Example.com/foo:1", True),  # domains may be upper
    ("Foo/bar:1", "Foo/bar:1", True),  # an uppercase first component is a domain
    ("xn--bcher-kva.example/app:1", "xn--bcher-kva.example/app:1", True),
    ("my-registry.example.com/app:1", "my-registry.example.com/app:1", True),
    # path separators
    ("reg.example.com/a_b/c__d/e-f/g--h/i.j:1", "reg.example.com/a_b/c__d/e-f/g--h/i.j:1", True),
    ("reg.example.com/a---b:1", "reg.example.com/a---b:1", True),
    # tags
    ("reg.example.com/app:v1.2.3-rc.1_build", "reg.example.com/app:v1.2.3-rc.1_build", True),
    ("reg.example.com/app:_private", "reg.example.com/app:_private", True),
    ("reg.example.com/app:" + "t" * 128, "reg.example.com/app:" + "t" * 128, True),
    ("reg.example.com/app:Latest", "reg.example.com/app:Latest", True),
    # digests: containerd keeps only the digest when both are given
    (f"reg.example.com/app@{D64}", f"reg.example.com/app@{D64}", True),
    (f"reg.example.com/app:v1@{D64}", f"reg.example.com/app@{D64}", False),
    (f"nginx@{D64}", f"docker.io/library/nginx@{D64}", False),
    (f"docker.io/library/nginx@{D64B}", f"docker.io/library/nginx@{D64B}", True),
    (f"reg.example.com/app@sha512:{'b' * 128}", f"reg.example.com/app@sha512:{'b' * 128}", True),
    # invalid
    ("", None, False),
    ("a" * 64, None, False),  # an image ID is not a name
    ("foo/Bar:1", None, False),  # uppercase repository
    ("UPPER", None, False),
    ("reg.example.com/Foo:1", None, False),
    ("reg.example.com/app:", None, False),
    ("reg.example.com/app:.v1", None, False),
    ("reg.example.com/app:-v1", None, False),
    ("reg.example.com/app:" + "t" * 129, None, False),
    ("reg.example.com//app:1", None, False),
    ("reg.example.com/app/:1", None, False),
    ("/app:1", None, False),
    ("reg.example.com/_app:1", None, False),
    ("reg.example.com/app_:1", None, False),
    ("reg.example.com/a___b:1", None, False),
    ("reg.example.com/a..b:1", None, False),
    ("reg.example.com/app@sha256:abc", None, False),  # too short
    (f"reg.example.com/app@sha256:{'A' * 64}", None, False),  # uppercase hex
    (f"reg.example.com/app@md5:{'a' * 32}", None, False),  # unsupported algorithm
    ("reg.example.com/app@", None, False),
    ("-reg.example.com/app:1", None, False),
    ("reg.example.com:port/app:1", None, False),
    ("reg example.com/app:1", None, False),
    ("reg.example.com/app:1 ", None, False),
    ("reg.example.com/app:v1:v2", None, False),
    ("[::1/app:1", None, False),
    ("reg.example.com/" + "a" * 256 + ":1", None, False),  # name longer than 255
    ("reg.example.com/app\n:1", None, False),
    ("reg.example.com/app:1\n", None, False),
    ("reg.example.com/äpp:1", None, False),
]


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 60
    assert sum(1 for _, n, _ in CORPUS if n is None) >= 20


@pytest.mark.parametrize(("text", "normal", "qualified"), CORPUS)
def test_corpus(text: str, normal: str | None, qualified: bool) -> None:
    if normal is None:
        with pytest.raises(refs.ReferenceError):
            refs.normalize(text)
    else:
        assert str(refs.normalize(text)) == normal
    assert refs.is_fully_qualified(text) is qualified


def test_parse_keeps_what_was_written() -> None:
    ref = refs.parse("[::1]:5000/team/app:v1@" + D64)
    assert ref == refs.Reference("[::1]:5000", "team/app", "v1", D64)
    assert str(ref) == "[::1]:5000/team/app:v1@" + D64
    assert refs.parse("nginx") == refs.Reference(None, "nginx")


def test_short_name_split_domain() -> None:
    assert refs.split_domain("nginx") == ("docker.io", "library/nginx")
    assert refs.split_domain("localhost/x") == ("localhost", "x")
    assert refs.split_domain("a.b/x/y") == ("a.b", "x/y")


def test_errors_say_why() -> None:
    with pytest.raises(refs.ReferenceError, match="lowercase"):
        refs.normalize("foo/Bar")
    with pytest.raises(refs.ReferenceError, match="255"):
        refs.parse("reg.example.com/" + "a" * 256)
    with pytest.raises(refs.ReferenceError, match="64-byte"):
        refs.normalize("f" * 64)


def test_normalised_form_is_a_fixed_point() -> None:
    for _text, normal, _ in CORPUS:
        if normal is not None:
            assert refs.is_fully_qualified(normal), normal
