"""Hostile values: nothing a user, an inventory or a lock holds can rewrite what a node runs.

Every value that reaches user-data, meta-data, the data file or the Packer build passes a
whole-string grammar; generated YAML comes from a serializer and is read back; bad YAML is
exit 2 with a position, never an internal error.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kiln import cloudconfig, pem
from kiln import config as config_mod
from kiln.errors import ConfigError, KilnError
from kiln.inventory import Node, load_inventory
from kiln.lock import Lock, LockedImage
from kiln.render import PlainLocator, SigV4Locator, render
from tests.helpers import TEST_CA, write_tree

ROOT = Path(__file__).resolve().parents[2]
SHA = "a" * 64
IMAGE = LockedImage(
    name="dex", ref="registry.example.com/foundation/dex:v2", image_id="sha256:" + "b" * 64,
    platform="linux/amd64", sha256=SHA, size=10, uncompressed_size=20, compression="zstd",
    compression_level=1, key=f"blobs/sha256/{SHA}", roles=("worker",), source="build",
    manifest_digests=(("linux/amd64", "sha256:" + "c" * 64),))
LOCK = Lock("dev", "registry.example.com", images=(IMAGE,))

BASE = """\
version: 1
images:
  - {name: dex, ref: "registry.example.com/foundation/dex:v2", build: ctx, roles: [worker]}
environments:
  dev:
    registry: registry.example.com
    store: {type: dir, path: store, url: "http://127.0.0.1:8080/"}
"""

NEWLINES = ["\n", "\r", "\u2028", "\u0085"]
PAYLOAD = "users: [{name: evil, ssh_authorized_keys: [ssh-ed25519 AAAA]}]"


def load_text(tmp_path: Path, text: str) -> config_mod.Config:
    write_tree(tmp_path, {"images.yaml": ""})
    (tmp_path / "images.yaml").write_text(text, encoding="utf-8")
    return config_mod.load(tmp_path / "images.yaml")


def dq(value: str) -> str:
    """A YAML double-quoted scalar for ``value`` (so tests can plant any character)."""
    return json.dumps(value, ensure_ascii=False)


def problems(excinfo: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [str(p) for p in excinfo.value.problems]


def read_user_data(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode("utf-8")


def user_data(tmp_path: Path, env: config_mod.Environment, nodes: list[Node] | None = None,
              lock: Lock = LOCK) -> dict[str, object]:
    render(env, lock, tmp_path / "dist", PlainLocator("http://127.0.0.1:8080/"), nodes=nodes)
    loaded = yaml.safe_load(read_user_data(tmp_path / "dist/dev/cloud-init/user-data"))
    assert isinstance(loaded, dict)
    return loaded


# -- section 1: inventory values ----------------------------------------------------------------


@pytest.mark.parametrize("newline", NEWLINES)
def test_a_role_with_a_line_break_is_refused_at_its_position(tmp_path: Path,
                                                              newline: str) -> None:
    role = f"worker{newline}{PAYLOAD}"
    (tmp_path / "nodes.yaml").write_text(
        f"nodes:\n  - hostname: w-1\n    roles: [{dq(role)}]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_inventory(tmp_path / "nodes.yaml")
    [message] = problems(excinfo)  # (YAML folds a quoted NEL into a space: refused all the same)
    assert message.startswith(f"{tmp_path / 'nodes.yaml'}:3:13: role 'worker")
    assert message.endswith("must match [a-z0-9](?:[a-z0-9_.-]{0,61}[a-z0-9])?")


@pytest.mark.parametrize("hostname", ["cp-9\n", "cp-9\r", "CP-9", "cp_9", "a" * 64,
                                      ".".join(["a" * 63] * 4), "-cp", ""])
def test_bad_hostnames_are_refused_at_their_position(tmp_path: Path, hostname: str) -> None:
    (tmp_path / "nodes.yaml").write_text(f"nodes:\n  - {{hostname: {dq(hostname)}}}\n")
    with pytest.raises(ConfigError) as excinfo:
        load_inventory(tmp_path / "nodes.yaml")
    assert len(excinfo.value.problems) == 1
    assert excinfo.value.problems[0].line == 2
    assert "hostname" in excinfo.value.problems[0].message


def test_duplicate_keys_in_the_inventory_are_refused(tmp_path: Path) -> None:
    (tmp_path / "nodes.yaml").write_text(
        "nodes:\n  - {hostname: cp-1}\nnodes: []\n")
    with pytest.raises(ConfigError) as excinfo:
        load_inventory(tmp_path / "nodes.yaml")
    assert problems(excinfo) == [
        f"{tmp_path / 'nodes.yaml'}:3:1: inventory: duplicate key 'nodes'"]


def test_duplicate_keys_inside_a_node_are_refused(tmp_path: Path) -> None:
    (tmp_path / "nodes.yaml").write_text(
        "nodes:\n  - {hostname: cp-1, roles: [worker], roles: [control-plane]}\n")
    with pytest.raises(ConfigError) as excinfo:
        load_inventory(tmp_path / "nodes.yaml")
    assert problems(excinfo) == [f"{tmp_path / 'nodes.yaml'}:2:39: node: duplicate key 'roles'"]


# -- section 1: images.yaml values --------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("name", "dex\n"), ("platform", "linux/amd64\n"), ("roles", ["worker\n"]),
    ("roles", [f"worker\u2028{PAYLOAD}"]),
])
def test_image_fields_with_a_trailing_newline_are_refused(tmp_path: Path, field: str,
                                                          value: object) -> None:
    text = BASE.replace("roles: [worker]}", f"roles: [worker], {field}: {json.dumps(value)}}}"
                        if field != "roles" else f"roles: {json.dumps(value)}}}")
    with pytest.raises(ConfigError) as excinfo:
        load_text(tmp_path, text)
    assert all(p.line == 3 for p in excinfo.value.problems), problems(excinfo)


def test_an_environment_key_with_a_newline_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_text(tmp_path, BASE.replace("  dev:", '  "dev\\n":'))
    assert [p.line for p in excinfo.value.problems] == [5]


@pytest.mark.parametrize(("key", "value"), [
    ("region", "us-east-1\nimage x y"), ("region", "us east"), ("bucket", "node-images\n"),
    ("bucket", "a b"), ("prefix", "foundation/\nset x"), ("prefix", "a b/"),
    ("endpoint", "https://s3.internal\n"), ("url", "https://cdn.internal/x\"y"),
    ("url", "https://cdn.internal/\u00e9"), ("ttl", "24h\n"), ("ttl", "24 h"),
])
def test_store_settings_pass_a_whole_string_grammar(tmp_path: Path, key: str, value: str) -> None:
    bucket = "" if key == "bucket" else "bucket: bkt, "
    text = BASE.replace(
        'store: {type: dir, path: store, url: "http://127.0.0.1:8080/"}',
        f'store: {{type: s3, {bucket}url_mode: sigv4, {key}: {dq(value)}}}')
    with pytest.raises(ConfigError) as excinfo:
        load_text(tmp_path, text)
    assert [p.line for p in excinfo.value.problems] == [7], problems(excinfo)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/\n", "http://a/ b", "ftp://a/",
                                 "http://a/$(reboot)`x`", "http://a/\\x"])
def test_a_dir_store_url_passes_the_grammar(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError):
        load_text(tmp_path, BASE.replace('"http://127.0.0.1:8080/"', dq(url)))


@pytest.mark.parametrize("source", ['source.null.a"b', "source.null.a\n", "source.null.${x}",
                                    "source.null"])
def test_packer_sources_pass_the_grammar(tmp_path: Path, source: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_text(tmp_path, BASE + f"    packer: {{sources: [{dq(source)}]}}\n")
    assert [p.line for p in excinfo.value.problems] == [8]


@pytest.mark.parametrize(("entry", "line"), [
    ('{path: "/etc/motd\\nruncmd: [reboot]", content: x}', 10),
    ('{path: etc/motd, content: x}', 10),
    ('{path: /etc/motd, content: "x\\u0000y"}', 10),
    ('{path: /etc/motd, content: "x\\ud83dy"}', 10),
    ('{path: /etc/motd, permissions: "0644\\n", content: x}', 10),
    ('{path: /etc/motd, owner: "root:root\\n", content: x}', 10),
    ('{path: /etc/motd, content: [1, 2]}', 10),
])
def test_cloud_init_write_files_entries_pass_a_grammar(tmp_path: Path, entry: str,
                                                       line: int) -> None:
    text = BASE + f"    cloud_init:\n      write_files:\n        - {entry}\n"
    with pytest.raises(ConfigError) as excinfo:
        load_text(tmp_path, text)
    assert [p.line for p in excinfo.value.problems] == [line], problems(excinfo)


# -- section 1: the generated files ------------------------------------------------------------


def test_non_ascii_content_survives_into_user_data(tmp_path: Path) -> None:
    content = "kiln 🚀 café\n\u00a0naïve\n"
    text = (BASE + "    cloud_init:\n      write_files:\n"
            f"        - {{path: /etc/motd, content: {dq(content)}}}\n")
    env = load_text(tmp_path, text).environment("dev")
    data = user_data(tmp_path, env)
    raw = read_user_data(tmp_path / "dist/dev/cloud-init/user-data").encode("utf-8")
    assert "🚀".encode() in raw
    files = data["write_files"]
    assert isinstance(files, list) and files[-1] == {"path": "/etc/motd", "content": content}


def test_user_data_top_level_keys_are_exactly_kilns(tmp_path: Path) -> None:
    runcmd = ["echo '$(reboot)'", f"x\n{PAYLOAD}", ["sh", "-c", "a\nusers: []"]]
    text = BASE + "    cloud_init:\n      runcmd: " + json.dumps(runcmd) + "\n"
    env = load_text(tmp_path, text).environment("dev")
    data = user_data(tmp_path, env, nodes=[Node("w-1", ("worker",))])
    assert list(data) == ["bootcmd", "write_files", "runcmd"]
    assert data["runcmd"][1:] == runcmd
    seed = yaml.safe_load(read_user_data(tmp_path / "dist/dev/nodes/w-1/user-data"))
    assert list(seed) == ["bootcmd", "write_files", "runcmd"]
    meta = yaml.safe_load((tmp_path / "dist/dev/nodes/w-1/meta-data").read_text())
    assert meta == {"instance-id": "dev-w-1", "local-hostname": "w-1"}


def test_no_data_in_yaml_comments(tmp_path: Path) -> None:
    env = load_text(tmp_path, BASE).environment("dev")
    render(env, LOCK, tmp_path / "dist", PlainLocator("http://127.0.0.1:8080/"),
           nodes=[Node("w-1", ("worker",))])
    for rel in ("cloud-init/user-data", "nodes/w-1/user-data", "nodes/w-1/meta-data"):
        text = read_user_data(tmp_path / "dist/dev" / rel)
        comments = [line for line in text.splitlines() if line.startswith("#")]
        assert all("worker" not in c and "dev" not in c for c in comments), comments


@pytest.mark.parametrize(("field", "value"), [
    ("ref", "registry.example.com/foundation/dex:v2\nimage x"),
    ("name", "dex\nset sigv4 x"), ("url", None), ("platform", "linux/amd64 x"),
    ("image_id", "sha256:" + "b" * 63 + "\n"), ("key", "blobs/sha256/a b"),
])
def test_a_tampered_lock_cannot_reach_the_data_file(tmp_path: Path, field: str,
                                                    value: str | None) -> None:
    env = load_text(tmp_path, BASE).environment("dev")
    if value is None:
        locator = PlainLocator("http://127.0.0.1:8080/\nset x y")
        lock = LOCK
    else:
        locator = PlainLocator("http://127.0.0.1:8080/")
        lock = replace(LOCK, images=(replace(IMAGE, **{field: value}),))
    with pytest.raises(KilnError) as excinfo:
        render(env, lock, tmp_path / "dist", locator)
    assert "\n" not in str(excinfo.value)
    assert not (tmp_path / "dist/dev/node/images.data").exists()


def test_sigv4_settings_pass_their_grammar(tmp_path: Path) -> None:
    env = load_text(tmp_path, BASE).environment("dev")
    for locator in (SigV4Locator("https://s3.internal", "bkt", "us-east-1\nimage x", "K:S", None),
                    SigV4Locator("https://s3.internal", "bkt", "us-east-1", 'K:S"\nx', None),
                    SigV4Locator("https://s3.internal", "bkt", "us-east-1", "K:S", "t\"x")):
        with pytest.raises(KilnError):
            render(env, LOCK, tmp_path / "dist", locator)


def test_packer_build_strings_are_hcl_escaped(tmp_path: Path) -> None:
    write_tree(tmp_path, {"packer/n.pkr.hcl": 'source "null" "n-1" {\n  communicator = '
                                              '"none"\n}\n'})
    text = BASE + "    packer: {sources: [source.null.n-1]}\n"
    env = load_text(tmp_path, text).environment("dev")
    render(env, LOCK, tmp_path / "dist", PlainLocator("http://127.0.0.1:8080/"),
           packer_dir=tmp_path / "packer")
    text = (tmp_path / "dist/dev/packer/build.pkr.hcl").read_text()
    assert 'sources = ["source.null.n-1"]' in text


# -- CA bundles ----------------------------------------------------------------------------------


def ca_env(tmp_path: Path, bundle: str) -> config_mod.Environment:
    (tmp_path / "ca.pem").write_text(bundle)
    return load_text(tmp_path, BASE + "    node: {ca_bundle: ca.pem}\n").environment("dev")


@pytest.mark.parametrize(("bundle", "why"), [
    (TEST_CA + "-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n",
     "private key"),
    (TEST_CA + "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n",
     "private key"),
    ("".join("  " + line + "\n" for line in TEST_CA.splitlines()), "start the line"),
    (TEST_CA.replace("sWLCMeqNDrpa\n", ""), "truncated"),
    (TEST_CA.replace("-----END CERTIFICATE-----\n", ""), "no END"),
    (TEST_CA.replace("MIIB", "MI!B"), "not base64"),
    ("just text\n", "no PEM certificate"),
    (TEST_CA + "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n", "truncated"),
])
def test_a_bad_ca_bundle_is_refused_with_its_file_name(tmp_path: Path, bundle: str,
                                                       why: str) -> None:
    env = ca_env(tmp_path, bundle)
    with pytest.raises(KilnError) as excinfo:
        render(env, LOCK, tmp_path / "dist", PlainLocator("http://127.0.0.1:8080/"))
    message = str(excinfo.value)
    assert str(tmp_path / "ca.pem") in message and why in message, message
    assert not (tmp_path / "dist/dev/cloud-init/user-data").exists()


def test_a_system_style_bundle_is_accepted_and_canonical(tmp_path: Path) -> None:
    env = ca_env(tmp_path, "# Issuer: CN=kiln-test-ca\n\n" + TEST_CA + "\n# trailing words\n")
    data = user_data(tmp_path, env)
    assert data["ca_certs"] == {"trusted": [TEST_CA]}
    assert pem.certificates(TEST_CA, "x") == [TEST_CA]


# -- section 4: bad YAML is exit 2 with a position ---------------------------------------------


BAD_SCALARS = ["!!int abc", "!!float x", "!!timestamp nope", "9" * 5000, '!!binary "é"',
               "!!str [x]", "!!bool maybe"]


@pytest.mark.parametrize("scalar", BAD_SCALARS)
@pytest.mark.parametrize("where", ["platform", "roles", "parallel", "runcmd", "write_files"])
def test_bad_scalars_in_images_yaml_are_positioned(tmp_path: Path, scalar: str,
                                                   where: str) -> None:
    text = {
        "platform": BASE.replace("roles: [worker]}", f"roles: [worker], platform: {scalar}}}"),
        "roles": BASE.replace("roles: [worker]}", f"roles: [{scalar}]}}"),
        "parallel": BASE + f"    node: {{parallel: {scalar}}}\n",
        "runcmd": BASE + f"    cloud_init: {{runcmd: [{scalar}]}}\n",
        "write_files": BASE + "    cloud_init: {write_files: "
                              f"[{{path: /x, content: {scalar}}}]}}\n",
    }[where]
    with pytest.raises(ConfigError) as excinfo:
        load_text(tmp_path, text)
    assert all(p.line in (3, 8) for p in excinfo.value.problems), problems(excinfo)


@pytest.mark.parametrize("scalar", BAD_SCALARS)
def test_bad_scalars_in_the_inventory_are_positioned(tmp_path: Path, scalar: str) -> None:
    (tmp_path / "nodes.yaml").write_text(f"nodes:\n  - {{hostname: w-1, roles: [{scalar}]}}\n")
    with pytest.raises(ConfigError) as excinfo:
        load_inventory(tmp_path / "nodes.yaml")
    assert [p.line for p in excinfo.value.problems] == [2]


@pytest.mark.parametrize("text", [
    "nodes:\n  - {<<: 5, hostname: w-1}\n",
    "nodes:\n  - {<<: [5], hostname: w-1}\n",
    "<<: 5\nnodes: []\n",
])
def test_bad_merge_keys_in_the_inventory_are_positioned(tmp_path: Path, text: str) -> None:
    (tmp_path / "nodes.yaml").write_text(text)
    with pytest.raises(ConfigError):
        load_inventory(tmp_path / "nodes.yaml")


def test_bad_merge_keys_in_cloud_init_are_positioned(tmp_path: Path) -> None:
    text = BASE + "    cloud_init:\n      write_files: [{<<: 5, path: /x, content: y}]\n"
    with pytest.raises(ConfigError) as excinfo:
        load_text(tmp_path, text)
    assert [p.line for p in excinfo.value.problems] == [9]


def test_an_alias_bomb_in_cloud_init_is_refused(tmp_path: Path) -> None:
    bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, 9):
        prev = chr(ord("a") + n - 1)
        bomb.append(f"{chr(ord('a') + n)}: &{chr(ord('a') + n)} [" + ",".join([f"*{prev}"] * 9)
                    + "]")
    text = BASE + "    cloud_init:\n      write_files:\n        - path: /x\n          content:\n" \
        + "".join(f"            {line}\n" for line in bomb)
    with pytest.raises(ConfigError) as excinfo:
        load_text(tmp_path, text)
    assert any("too large" in p.message for p in excinfo.value.problems), problems(excinfo)


def test_a_missing_registry_ca_is_positioned(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_text(tmp_path, BASE + "    registry_ca: certs/nope.pem\n")
    assert [p.line for p in excinfo.value.problems] == [8]
    assert "cannot read" in excinfo.value.problems[0].message


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "bake.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("scalar", ["!!int abc", "!!timestamp nope", "9" * 5000])
def test_cli_exits_2_with_a_position_not_3(tmp_path: Path, scalar: str) -> None:
    write_tree(tmp_path, {"images.yaml": BASE + f"    node: {{parallel: {scalar}}}\n"})
    result = run_cli("lint", "--env", "dev", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert re.search(r"images\.yaml:8:\d+: ", result.stderr), result.stderr
    assert "internal error" not in result.stderr


def test_an_over_long_hostname_is_exit_2_with_a_position(tmp_path: Path) -> None:
    long_name = ".".join(["a" * 63] * 5)
    write_tree(tmp_path, {"images.yaml": BASE,
                          "nodes.yaml": f"nodes:\n  - {{hostname: {long_name}}}\n"})
    (tmp_path / "dist/dev").mkdir(parents=True)
    from kiln import lock as lockfile

    lockfile.write(lockfile.lock_path(tmp_path / "dist", "dev"), LOCK)
    result = run_cli("render", "--env", "dev", "--inventory", "nodes.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "nodes.yaml:2:" in result.stderr and "too long" not in result.stderr.lower()


# -- the property: any string in any user field is refused with a position, or arrives exactly --

FUZZ_DIR = tempfile.TemporaryDirectory(prefix="kiln-hostile-")
HOSTILE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["worker", "w-1", "linux/amd64", "/etc/x", "0644", "root:root"]).flatmap(
        lambda good: st.sampled_from(["\n", "\r", "\u2028", "\u0085", "\x00", " ", "\t",
                                      "$(reboot)", "'", '"', "\\", "#", "\n- x", ": y"]).map(
            lambda bad: good + bad)),
)


def base_document() -> dict[str, Any]:
    return {
        "version": 1,
        "images": [{"name": "dex", "ref": "registry.example.com/foundation/dex:v2",
                    "build": "ctx", "roles": ["worker"]}],
        "environments": {"dev": {
            "registry": "registry.example.com",
            "store": {"type": "dir", "path": "store", "url": "http://127.0.0.1:8080/"},
            "node": {"user_data_limit": 1 << 24},
            "cloud_init": {"write_files": [{"path": "/etc/x", "content": "x",
                                            "permissions": "0644", "owner": "root:root"}],
                           "runcmd": [["echo", "x"], "echo y"]},
        }},
    }


FIELDS: dict[str, Any] = {
    "image name": lambda d, v: d["images"][0].__setitem__("name", v),
    "image role": lambda d, v: d["images"][0].__setitem__("roles", [v]),
    "platform": lambda d, v: d["images"][0].__setitem__("platform", v),
    "environment": lambda d, v: d.__setitem__("environments", {v: d["environments"]["dev"]}),
    "store url": lambda d, v: d["environments"]["dev"]["store"].__setitem__("url", v),
    "write_files path": lambda d, v: d["environments"]["dev"]["cloud_init"]["write_files"][0]
    .__setitem__("path", v),
    "write_files content": lambda d, v: d["environments"]["dev"]["cloud_init"]["write_files"][0]
    .__setitem__("content", v),
    "write_files permissions": lambda d, v: d["environments"]["dev"]["cloud_init"][
        "write_files"][0].__setitem__("permissions", v),
    "write_files owner": lambda d, v: d["environments"]["dev"]["cloud_init"]["write_files"][0]
    .__setitem__("owner", v),
    "runcmd word": lambda d, v: d["environments"]["dev"]["cloud_init"]["runcmd"][0]
    .__setitem__(1, v),
    "runcmd line": lambda d, v: d["environments"]["dev"]["cloud_init"]["runcmd"].__setitem__(1, v),
}


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from([*sorted(FIELDS), "hostname", "inventory role"]), value=HOSTILE)
def test_any_value_is_refused_with_a_position_or_arrives_exactly(field: str, value: str) -> None:
    folder = Path(tempfile.mkdtemp(dir=FUZZ_DIR.name))
    document = base_document()
    host = value if field == "hostname" else "w-1"
    role = value if field == "inventory role" else "worker"
    if field in FIELDS:
        FIELDS[field](document, value)
    (folder / "images.yaml").write_text(yaml.safe_dump(document),
                                        encoding="utf-8")
    (folder / "nodes.yaml").write_text(
        yaml.safe_dump({"nodes": [{"hostname": host, "roles": [role]}]}),
        encoding="utf-8")
    try:
        config = config_mod.load(folder / "images.yaml", "images.yaml")
        nodes = load_inventory(folder / "nodes.yaml", "nodes.yaml")
    except ConfigError as exc:
        assert exc.problems and all(re.fullmatch(r"(images|nodes)\.yaml", p.path)
                                    and p.line >= 1 and p.column >= 1 for p in exc.problems)
        event(f"{field}: refused")
        return
    event(f"{field}: rendered")
    [env] = config.environments.values()
    [image] = config.images
    lock = Lock(env.name, env.registry, images=(replace(
        IMAGE, name=image.name, platform=image.platform, roles=image.roles,
        manifest_digests=((image.platform, "sha256:" + "c" * 64),)),))
    url = env.store.url
    assert url is not None
    render(env, lock, folder / "dist", PlainLocator(url), nodes=nodes)
    base = folder / "dist" / env.name
    data = yaml.safe_load(read_user_data(base / "cloud-init/user-data"))
    assert list(data) == ["bootcmd", "write_files", "runcmd"]
    assert data["write_files"][-1] == dict(document["environments"][env.name]["cloud_init"][
        "write_files"][0])
    assert data["runcmd"][1:] == document["environments"][env.name]["cloud_init"]["runcmd"]
    [line] = [row for row in data["write_files"][1]["content"].splitlines()
              if row.startswith("image ")]
    fields = line.split()
    assert fields[1] == image.name and fields[9] == image.platform
    assert fields[10] == url.rstrip("/") + "/" + IMAGE.key
    [seed] = nodes
    meta = yaml.safe_load((base / "nodes" / seed.hostname / "meta-data").read_text())
    assert meta == {"instance-id": f"{env.name}-{host}", "local-hostname": host}
    seed_data = yaml.safe_load(read_user_data(base / "nodes" / seed.hostname / "user-data"))
    images_in_seed = [row for row in seed_data["write_files"][1]["content"].splitlines()
                      if row.startswith("image ")]
    assert len(images_in_seed) == (1 if role in image.roles else 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(), max_size=4), st.dictionaries(st.text(max_size=5), st.text()))
def test_the_serializer_reads_back_exactly_or_refuses(texts: list[str],
                                                      mapping: dict[str, str]) -> None:
    document = {"bootcmd": texts, "write_files": [mapping]}
    try:
        text = cloudconfig.dump(document, ("fixed",))
    except cloudconfig.SerializeError:
        event("refused")
        return
    event("exact")
    assert yaml.safe_load(text) == document
    assert text.startswith("#cloud-config\n# fixed\nbootcmd:")


def test_the_bootcmd_is_posix_sh_clean_under_shellcheck(tmp_path: Path) -> None:
    import shutil

    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is missing: .ci/run installs it (apt-get install shellcheck)")
    env = load_text(tmp_path, BASE).environment("dev")
    data = user_data(tmp_path, env)
    [script] = data["bootcmd"]
    assert isinstance(script, str)
    (tmp_path / "bootcmd.sh").write_text("#!/bin/sh\nset -eu\n" + script)
    result = subprocess.run(["shellcheck", "-s", "sh", str(tmp_path / "bootcmd.sh")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    # the unit text reaches the file byte for byte through sh's quoting
    out = tmp_path / "root"
    script = script.replace("/etc/systemd", str(out / "etc/systemd")).replace(
        "/run/systemd/system", str(out / "no-systemd-here"))  # never touch this machine's
    subprocess.run(["sh", "-eu", "-c", script], check=True, env={"PATH": "/usr/bin:/bin"})
    written = (out / "etc/systemd/system/kiln-import.service").read_text()
    assert written == (tmp_path / "dist/dev/node/kiln-import.service").read_text()


def test_an_unreadable_registry_ca_leaves_no_temp_folder(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.registry import Registry, RegistryError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(RegistryError, match="cannot read the registry CA"):
        Registry("registry.example.com", tmp_path / "gone.pem", environ={})
    assert list(tmp_path.iterdir()) == []


def test_golden_is_a_command_with_the_exit_contract(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from kiln.cli import main

    write_tree(tmp_path, {"images.yaml": BASE})
    config = str(tmp_path / "images.yaml")
    assert main(["golden", "--env", "nope", "--config", config]) == 2
    assert capsys.readouterr().err.startswith("kiln: error: no environment 'nope'")
    assert main(["golden", "--env", "dev", "--config", config]) == 2
    assert "names no packer sources" in capsys.readouterr().err


@pytest.mark.parametrize(("field", "value"), [
    ("key", "../../VICTIM.txt"), ("key", "/etc/passwd"), ("key", f"other/blobs/sha256/{SHA}x"),
    ("key", "blobs/sha256/" + "b" * 64), ("sha256", "A" * 64), ("image_id", "sha256:1"),
    ("size", -1), ("roles", ["worker\nx"]), ("name", "Dex"),
    ("manifest_digests", {"linux/amd64": "sha256:1"}), ("manifest_digests", {}),
    ("manifest_digests", {"linux/amd64\nx": "sha256:" + "c" * 64}),
    ("manifest_digests", {"linux/arm64": "sha256:" + "c" * 64}),
    ("manifest_digests", ["sha256:" + "c" * 64]), ("index_digest", "sha256:" + "C" * 64),
])
def test_a_lock_value_kiln_would_not_write_is_refused_when_read(tmp_path: Path, field: str,
                                                                value: object) -> None:
    """A hand-edited key like `../../x` made a bake "repair" (delete) a file outside the
    store (adversarial review); every value of a lock is checked when it is read."""
    from kiln import lock as lockfile

    path = tmp_path / "images.lock.json"
    lockfile.write(path, LOCK)
    data = json.loads(path.read_text())
    data["images"][0][field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(KilnError, match=r"is not what kiln writes|is not a size|no manifest "
                                        r"digest for its platform|not a kiln lock file"):
        lockfile.read(path)


def test_a_deeply_nested_lock_is_a_one_line_error(tmp_path: Path) -> None:
    from kiln import lock as lockfile

    path = tmp_path / "images.lock.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(KilnError, match="not a kiln lock file"):
        lockfile.read(path)


def test_a_node_whose_roles_select_no_image_is_refused_at_its_place(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Under hold-kubelet such a node could never start kubelet, and render said nothing
    (adversarial review)."""
    from kiln import lock as lockfile
    from kiln.cli import main

    write_tree(tmp_path, {"images.yaml": BASE, "nodes.yaml":
                          "nodes:\n  - {hostname: w-1, roles: [worker]}\n"
                          "  - {hostname: w-2, roles: [wroker]}\n"})
    lockfile.write(lockfile.lock_path(tmp_path / "dist", "dev"), LOCK)
    code = main(["render", "--env", "dev", "--config", str(tmp_path / "images.yaml"),
                 "--inventory", str(tmp_path / "nodes.yaml")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{tmp_path / 'nodes.yaml'}:3:5: node w-2: roles ['wroker'] select no image" in err


def test_an_empty_lock_renders_nothing(tmp_path: Path) -> None:
    env = load_text(tmp_path, BASE).environment("dev")
    with pytest.raises(KilnError, match="lists no images"):
        render(env, replace(LOCK, images=()), tmp_path / "dist",
               PlainLocator("http://127.0.0.1:8080/"))


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/mirror#", "http://a/x?y=1",
                                 "http://a/$(reboot)/", "http://a/it's/", "http://a/a;b",
                                 "http://a/a&b", "http://a/*"])
def test_a_base_url_takes_no_query_fragment_or_shell_characters(tmp_path: Path,
                                                                 url: str) -> None:
    """Keys are appended to the base URL: `#` or `?` sent every node to the wrong object
    (adversarial review)."""
    with pytest.raises(ConfigError) as excinfo:
        load_text(tmp_path, BASE.replace('"http://127.0.0.1:8080/"', dq(url)))
    assert [p.line for p in excinfo.value.problems] == [7]


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_ca_bundle_that_is_not_a_regular_file_is_refused_at_load(tmp_path: Path,
                                                                   kind: str) -> None:
    """/dev/zero exhausted memory, a FIFO hung lint and render (adversarial review)."""
    import os

    target = {"fifo": str(tmp_path / "ca.pem"), "device": "/dev/zero",
              "folder": str(tmp_path)}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    with pytest.raises(ConfigError) as excinfo:
        load_text(tmp_path, BASE + f"    node: {{ca_bundle: {dq(target)}}}\n")
    assert "not a readable regular file" in excinfo.value.problems[0].message


def test_an_over_long_store_path_is_positioned(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_text(tmp_path, BASE.replace("path: store", "path: " + "s" * 300))
    assert [p.line for p in excinfo.value.problems] == [7]
    assert "too long" in excinfo.value.problems[0].message


@pytest.mark.parametrize("tagged", ["!!python/object:os.system {}", "!!set {a, b}",
                                    "!!omap [{parallel: 2}]"])
def test_a_tagged_mapping_is_refused(tmp_path: Path, tagged: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_text(tmp_path, BASE + f"    node: {tagged}\n")
    assert [p.line for p in excinfo.value.problems] == [8]
