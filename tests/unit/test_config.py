"""images.yaml loading: the model, and file:line:col for every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln import config
from kiln.errors import ConfigError, UsageError
from tests.helpers import write_tree

GOOD = """
version: 1
images:
  - name: registry
    ref: ${registry}/foundation/registry:v0.4.2
    build: {context: images/registry, args: {VERSION: 1}}
    roles: [control-plane]
  - name: dex
    ref: registry.example.com/foundation/dex:v2.41.1
    pull: ghcr.io/dexidp/dex:v2.41.1@sha256:%s
  - name: keycloak
    ref: registry.example.com/foundation/keycloak:26.0.7
    archive: vendor/keycloak.tar
    platform: linux/arm64
environments:
  base: &base
    registry: registry.example.com
    store: {type: dir, path: dist/dev/store}
  prod:
    <<: *base
    store: {type: s3, bucket: b, endpoint: "https://minio:9000", prefix: p, ttl: 2h}
    compression: gzip
""" % ("a" * 64)


def load_text(tmp_path: Path, text: str) -> config.Config:
    write_tree(tmp_path, {"images.yaml": text})
    return config.load(tmp_path / "images.yaml", "images.yaml")


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return [str(p) for p in info.value.problems]


def test_loads_the_model(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, GOOD)
    registry, dex, keycloak = cfg.images
    assert registry.source == config.BuildSource(tmp_path / "images/registry",
                                                 args={"VERSION": "1"})
    assert registry.roles == ("control-plane",)
    assert registry.ref_at == config.Location("images.yaml", 4, 10)
    assert isinstance(dex.source, config.PullSource)
    assert keycloak.source == config.ArchiveSource(tmp_path / "vendor/keycloak.tar")
    assert keycloak.platform == "linux/arm64" and dex.platform == "linux/amd64"
    prod = cfg.environment("prod")
    assert prod.registry == "registry.example.com"  # from the merge key
    assert prod.store == config.S3Store(bucket="b", endpoint="https://minio:9000", prefix="p/",
                                        ttl_seconds=7200)
    assert prod.compression == config.Compression("gzip", 6)
    resolved = cfg.images_for(prod)
    assert resolved[0].ref == "registry.example.com/foundation/registry:v0.4.2"


def test_the_shipped_images_yaml_loads() -> None:
    cfg = config.load(Path(__file__).parents[2] / "images.yaml")
    assert {"dev", "prod"} <= set(cfg.environments)


@pytest.mark.parametrize(("text", "expected"), [
    ("version: 1\nimages: [\n", "images.yaml:3:1: YAML syntax error"),
    ("version: 1\n  bad: indent\n", "images.yaml:2:6: YAML syntax error"),
    ("version: 2\nimages: []\nenvironments: {}\n", "images.yaml:1:10: version must be 1"),
    ("- a\n", "images.yaml:1:1: images.yaml must be a mapping"),
    ("", "images.yaml:1:1: the file is empty"),
])
def test_syntax_and_top_level(tmp_path: Path, text: str, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(tmp_path, text)), problems(tmp_path, text)


def test_unknown_keys_suggest(tmp_path: Path) -> None:
    text = GOOD.replace("    roles: [control-plane]", "    rolse: [control-plane]")
    assert "images.yaml:6:5: image: unknown key 'rolse' (did you mean 'roles'?)" in problems(
        tmp_path, text)


def test_bundles_are_an_unknown_key_that_says_they_were_removed(tmp_path: Path) -> None:
    text = GOOD.replace("    compression: gzip\n", "    compression: gzip\n    bundles: [worker]\n")
    assert ("images.yaml:22:5: environment 'prod': unknown key 'bundles' (bundles were removed: "
            "each image is stored as its own object; delete the key)") in problems(tmp_path, text)


def test_every_problem_is_reported(tmp_path: Path) -> None:
    text = """
    version: 1
    images:
      - name: Bad Name
        ref: registry.example.com/Foundation/x:1
        build: ctx
      - name: two
        ref: registry.example.com/x:1
        build: ctx
        pull: docker.io/library/nginx:1
      - name: none
        ref: registry.example.com/y@sha256:%s
    environments:
      dev:
        registry: "not a registry"
        store: {type: dir}
        node: {parallel: 0, extra: 1}
    """ % ("a" * 64)
    found = problems(tmp_path, text)
    assert found == [
        "images.yaml:3:11: image name 'Bad Name' must match ^[a-z0-9][a-z0-9_.-]{0,62}$",
        "images.yaml:4:10: ref: repository name must be lowercase: "
        "'registry.example.com/Foundation/x:1'",
        "images.yaml:9:5: an image needs exactly one source: build, pull or archive "
        "(found build, pull)",
        "images.yaml:10:5: an image needs exactly one source: build, pull or archive",
        "images.yaml:11:10: ref must be name:tag without a digest: kiln tags the image itself, "
        "and a manifest digest changes between an imported archive and a registry copy",
        "images.yaml:14:15: registry must be a host name with an optional port, "
        "not 'not a registry'",
        "images.yaml:15:12: dir store: missing required key 'path'",
        "images.yaml:16:22: parallel must be between 1 and 32, not 0",
        "images.yaml:16:25: node: unknown key 'extra'",
    ]


def test_duplicate_keys_and_bad_values(tmp_path: Path) -> None:
    text = GOOD.replace("    platform: linux/arm64", "    platform: arm64\n    platform: x")
    found = problems(tmp_path, text)
    assert "images.yaml:14:5: image: duplicate key 'platform'" in found
    assert "images.yaml:13:15: platform must look like os/arch[/variant], not 'arm64'" in found


def test_ttl_is_bounded(tmp_path: Path) -> None:
    text = GOOD.replace("ttl: 2h", "ttl: 8d")
    assert any("ttl must be at most 7d" in p for p in problems(tmp_path, text))


@pytest.mark.parametrize("value", ["!!python/object/apply:os.system ['true']",
                                   "!!python/name:os.system ''", "!custom 1"])
def test_unsafe_tags_are_not_constructed(tmp_path: Path, value: str) -> None:
    text = GOOD.replace("version: 1", f"version: {value}")
    assert any(p.startswith("images.yaml:1:10:") for p in problems(tmp_path, text))


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.yaml")


def test_env_selection_names_what_exists(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, GOOD)
    with pytest.raises(UsageError, match=r"--env is required; .*: base, prod"):
        cfg.environment(None)
    with pytest.raises(UsageError, match="did you mean 'prod'"):
        cfg.environment("prd")


def test_durations() -> None:
    assert config.parse_duration("24h") == 86400
    assert config.parse_duration(90) == 90
    assert config.parse_duration("7d") == 7 * 86400
    assert config.parse_duration("0") is None
    assert config.parse_duration(True) is None
    assert config.parse_duration("1w") is None


MULTI = """
version: 1
images:
  - {name: a, ref: registry.example.com/f/a:v1, pull: "ghcr.io/x/a:v1@sha256:%s",
     platforms: [linux/amd64, linux/arm64]}
  - {name: b, ref: registry.example.com/f/b:v1, build: ctx}
  - {name: c, ref: registry.example.com/f/c:v1, build: ctx, platform: linux/arm/v7}
environments:
  dev: {registry: registry.example.com, store: {type: dir, path: s}}
  edge: {registry: registry.example.com, store: {type: dir, path: s},
         platforms: [linux/arm64, linux/riscv64]}
""" % ("a" * 64)


def test_platforms_per_image_default_to_the_environments(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MULTI)
    dev, edge = cfg.environments["dev"], cfg.environments["edge"]
    assert [i.platforms for i in cfg.images_for(dev)] == [
        ("linux/amd64", "linux/arm64"), ("linux/amd64",), ("linux/arm/v7",)]
    assert [i.platforms for i in cfg.images_for(edge)][1] == ("linux/arm64", "linux/riscv64")
    assert [(i.name, i.platform) for i in cfg.per_platform(dev)] == [
        ("a", "linux/amd64"), ("a", "linux/arm64"), ("b", "linux/amd64"), ("c", "linux/arm/v7")]


@pytest.mark.parametrize(("value", "expected"), [
    ("platforms: [linux/amd64, linux/amd64]", "6:86: platform 'linux/amd64' is listed twice"),
    ("platforms: [linux/amd64, 'linux/AMD64;x']",
     "6:86: platform 'linux/AMD64;x' must match os/arch[/variant]"),
    ("platforms: []", "6:72: platforms must be a list of os/arch[/variant]"),
    ("platforms: linux/amd64", "6:72: platforms must be a list of os/arch[/variant]"),
    ("platform: [linux/amd64, linux/arm64]",
     "6:71: platform names one os/arch[/variant]; for several write platforms:"),
    ("platform: linux/amd64, platforms: [linux/arm64]",
     "6:61: give platforms or platform, not both"),
])
def test_bad_platforms_are_refused_where_written(tmp_path: Path, value: str,
                                                 expected: str) -> None:
    text = MULTI.replace("platform: linux/arm/v7", value)
    found = problems(tmp_path, text)
    assert any(p.startswith(f"images.yaml:{expected}") for p in found), found


def test_environment_platforms_are_validated(tmp_path: Path) -> None:
    text = MULTI.replace("[linux/arm64, linux/riscv64]", "[linux/arm64, linux/arm64]")
    assert any("platform 'linux/arm64' is listed twice" in p for p in problems(tmp_path, text))
