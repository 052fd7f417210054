"""Render: golden files for every template, strict undefined, URL modes, inventory errors."""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

import jinja2
import pytest
import yaml

from kiln import config as config_mod
from kiln.errors import ConfigError
from kiln.inventory import load_inventory
from kiln.lock import Lock, LockedImage
from kiln.render import (
    TEMPLATES,
    Node,
    PlainLocator,
    PresignedLocator,
    RenderError,
    SigV4Locator,
    compact_shell,
    images_for_roles,
    jinja_env,
    locator_for,
    render,
)
from tests.helpers import TEST_CA, write_tree

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("KILN_UPDATE_GOLDEN") == "1"
CA = TEST_CA

CONFIG = """
version: 1
images:
  - {name: registry, ref: "registry.example.com/foundation/registry:v0.4.2", build: ctx,
     roles: [control-plane]}
  - {name: dex, ref: "registry.example.com/foundation/dex:v2.41.1", build: ctx}
environments:
  prod:
    registry: registry.example.com
    store: {type: dir, path: store, url: "https://artifacts.internal/kiln/"}
    node: {ca_bundle: ca.pem, parallel: 3, containerd_timeout: 120, user_data_limit: 65536}
    packer: {sources: [source.null.node]}
    cloud_init:
      write_files: [{path: /etc/motd, content: "a kiln node\\n"}]
      runcmd: [[kubeadm, join, --config, /etc/kubeadm/join.yaml]]
"""


def locked(name: str, roles: tuple[str, ...], n: int) -> LockedImage:
    return LockedImage(
        name=name, ref=f"registry.example.com/foundation/{name}:v{n}",
        image_id="sha256:" + f"{n}" * 64, platform="linux/amd64", sha256=f"{n + 1}" * 64,
        size=1000 * n, uncompressed_size=5000 * n, compression="zstd", compression_level=1,
        key=f"blobs/sha256/{f'{n + 1}' * 64}", roles=roles, source="build",
        manifest_digests=(("linux/amd64", "sha256:" + f"{n + 5}" * 64),))


def PACKER(tmp_path: Path) -> Path:
    return tmp_path / "packer"


LOCK = Lock("prod", "registry.example.com",
            images=(locked("dex", (), 2), locked("registry", ("control-plane",), 4)))


@pytest.fixture
def env(tmp_path: Path) -> config_mod.Environment:
    write_tree(tmp_path, {"images.yaml": CONFIG, "ca.pem": CA,
                          "packer/node.pkr.hcl": 'source "null" "node" {\n  communicator = '
                                                 '"none"\n}\n'})
    return config_mod.load(tmp_path / "images.yaml").environment("prod")


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with KILN_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file"


def test_golden_files(env: config_mod.Environment, tmp_path: Path) -> None:
    result = render(env, LOCK, tmp_path / "dist", PlainLocator("https://artifacts.internal/kiln/"),
                    nodes=[Node("cp-1", ("control-plane",)), Node("w-1", ("worker",))],
                    packer_dir=tmp_path / "packer")
    base = tmp_path / "dist/prod"
    for rel in ("node/images.data", "node/kiln-import.service", "node/10-kiln-import.conf",
                "cloud-init/user-data", "nodes/cp-1/meta-data", "nodes/w-1/user-data",
                "packer/build.pkr.hcl"):
        golden(rel.replace("/", "__"), (base / rel).read_text())
    assert (base / "node/import-images").read_text() == (TEMPLATES / "import-images.sh").read_text()
    assert os.access(base / "node/import-images", os.X_OK)
    assert (base / "packer/node.pkr.hcl").exists()  # the user's source joins the build
    assert not result.secret and result.warnings == []


def test_user_data_is_cloud_config_with_the_pieces(env: config_mod.Environment,
                                                   tmp_path: Path) -> None:
    render(env, LOCK, tmp_path, PlainLocator("https://a/"),
           packer_dir=PACKER(tmp_path))
    text = (tmp_path / "prod/cloud-init/user-data").read_text()
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    paths = [f["path"] for f in data["write_files"]]
    assert paths == ["/usr/local/lib/kiln/import-images", "/usr/local/lib/kiln/images.data",
                     "/usr/local/lib/kiln/ca.pem", "/etc/motd"]
    assert data["write_files"][0]["content"] == compact_shell(
        (TEMPLATES / "import-images.sh").read_text())
    assert data["ca_certs"]["trusted"] == [CA]
    # hold-kubelet (the default): the join steps wait until the import has succeeded
    assert data["runcmd"][0][:2] == ["sh", "-c"]
    assert "until systemctl start kiln-import.service" in data["runcmd"][0][2]
    assert data["runcmd"][1] == ["kubeadm", "join", "--config", "/etc/kubeadm/join.yaml"]
    assert "Before=kubelet.service" in data["bootcmd"][0]
    assert "systemctl start --no-block kiln-import.service" in data["bootcmd"][0]


def test_per_node_seeds_carry_only_their_roles(env: config_mod.Environment,
                                               tmp_path: Path) -> None:
    render(env, LOCK, tmp_path, PlainLocator("https://a/"),
           nodes=[Node("cp-1", ("control-plane",)), Node("w-1", ("worker",))],
           packer_dir=PACKER(tmp_path))
    worker = (tmp_path / "prod/nodes/w-1/user-data").read_text()
    control = (tmp_path / "prod/nodes/cp-1/user-data").read_text()
    assert "foundation/dex:v2" in worker and "foundation/registry" not in worker
    assert "foundation/dex:v2" in control and "foundation/registry:v4" in control
    assert yaml.safe_load((tmp_path / "prod/nodes/w-1/meta-data").read_text()) == {
        "instance-id": "prod-w-1", "local-hostname": "w-1"}
    assert [i.name for i in images_for_roles(LOCK, ("worker",))] == ["dex"]


def test_a_new_inventory_replaces_the_old_seeds(env: config_mod.Environment,
                                                tmp_path: Path) -> None:
    render(env, LOCK, tmp_path, PlainLocator("https://a/"), packer_dir=PACKER(tmp_path),
           nodes=[Node("old-1", ()), Node("w-1", ("worker",))])
    render(env, LOCK, tmp_path, PlainLocator("https://a/"), packer_dir=PACKER(tmp_path),
           nodes=[Node("w-1", ("worker",)), Node("w-2", ("worker",))])
    assert sorted(p.name for p in (tmp_path / "prod/nodes").iterdir()) == ["w-1", "w-2"]
    assert not (tmp_path / "prod/nodes.new").exists() and not (tmp_path / "prod/nodes.old").exists()


def test_oversized_user_data_is_gzipped_then_refused(env: config_mod.Environment,
                                                     tmp_path: Path) -> None:
    from dataclasses import replace

    small = replace(env, node=replace(env.node, user_data_limit=16000))
    result = render(small, LOCK, tmp_path, PlainLocator("https://a/"),
           packer_dir=PACKER(tmp_path))
    packed = (tmp_path / "prod/cloud-init/user-data").read_bytes()
    assert len(packed) <= 16000 and gzip.decompress(packed).startswith(b"#cloud-config")
    assert any("gzip" in w for w in result.warnings)
    tiny = replace(env, node=replace(env.node, user_data_limit=1024))
    with pytest.raises(RenderError, match=r"over the limit of 1024"):
        render(tiny, LOCK, tmp_path, PlainLocator("https://a/"),
           packer_dir=PACKER(tmp_path))


def test_an_undefined_template_variable_fails() -> None:
    template = jinja_env().from_string("ExecStart={{ prefix }}/import-images {{ nope }}")
    with pytest.raises(jinja2.UndefinedError):
        template.render(prefix="/usr/local/lib/kiln")
    for name in ("images.data.j2", "build.pkr.hcl.j2", "kiln-import.service.j2"):
        with pytest.raises(jinja2.UndefinedError):
            jinja_env().get_template(name).render()


def test_sigv4_output_is_secret(env: config_mod.Environment, tmp_path: Path) -> None:
    from dataclasses import replace

    locator = SigV4Locator("http://127.0.0.1:9000", "b", "us-east-1", "AKIA:SECRETKEY", None)
    result = render(replace(env, packer_sources=()), LOCK, tmp_path, locator,
                    nodes=[Node("w-1", ("worker",))])
    data = tmp_path / "prod/node/images.data"
    assert "set sigv4_user AKIA:SECRETKEY" in data.read_text()
    assert stat.S_IMODE(data.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "prod/cloud-init/user-data").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "prod/nodes/w-1/user-data").stat().st_mode) == 0o600
    assert result.secret and any(w.startswith("SECRET") for w in result.warnings)
    assert "http://127.0.0.1:9000/b/blobs/sha256/" in data.read_text()


class SigningClient:
    def generate_presigned_url(self, op: str, Params: dict[str, str], ExpiresIn: int) -> str:
        return (f"https://s3/{Params['Bucket']}/{Params['Key']}?X-Amz-Expires={ExpiresIn}"
                "&X-Amz-Security-Token=tok&X-Amz-Signature=sig")


HOLDS_URLS = {"node/images.data", "cloud-init/user-data", "nodes/w-1/user-data"}


def test_presigned_urls_are_credentials_written_0600(env: config_mod.Environment,
                                                     tmp_path: Path) -> None:
    """A presigned URL (signature, session token) fetches the object until it expires: every
    file holding one is 0600. No loud SECRET warning: that is for long-lived credentials."""
    result = render(env, LOCK, tmp_path, PresignedLocator(SigningClient(), "b", 3600),
                    nodes=[Node("w-1", ("worker",))], packer_dir=PACKER(tmp_path))
    assert result.private and not result.secret
    assert not any("SECRET" in w for w in result.warnings)
    for path in (tmp_path / "prod").rglob("*"):
        if path.is_file():
            rel = str(path.relative_to(tmp_path / "prod"))
            assert "SECRET" not in path.read_text(errors="replace")
            holds = "X-Amz-Signature=sig" in path.read_text(errors="replace")
            assert holds == (rel in HOLDS_URLS), rel
            mode = stat.S_IMODE(path.stat().st_mode)
            assert (mode == 0o600) if holds else bool(mode & 0o044), (rel, oct(mode))
    assert "X-Amz-Expires=3600" in (tmp_path / "prod/node/images.data").read_text()


def test_plain_urls_stay_world_readable(env: config_mod.Environment, tmp_path: Path) -> None:
    result = render(env, LOCK, tmp_path, PlainLocator("https://a/"),
                    nodes=[Node("w-1", ("worker",))], packer_dir=PACKER(tmp_path))
    assert not result.private
    for rel in HOLDS_URLS:
        assert stat.S_IMODE((tmp_path / "prod" / rel).stat().st_mode) == 0o644


def test_sigv4_credentials_in_a_golden_image_are_refused_without_the_flag(
        env: config_mod.Environment, tmp_path: Path) -> None:
    from dataclasses import replace

    from kiln.errors import EXIT_INVALID
    from kiln.render import GoldenCredentialsError

    sigv4 = replace(env, store=config_mod.S3Store(bucket="b", url_mode="sigv4"))
    locator = SigV4Locator("http://127.0.0.1:9000", "b", "us-east-1", "AKIA:SECRETKEY", None)
    with pytest.raises(GoldenCredentialsError, match="golden image") as info:
        render(sigv4, LOCK, tmp_path, locator, packer_dir=PACKER(tmp_path))
    assert info.value.exit_code == EXIT_INVALID
    assert "--allow-credentials-in-golden-image" in str(info.value)
    assert not (tmp_path / "prod").exists()  # refused before anything is written
    result = render(sigv4, LOCK, tmp_path, locator, packer_dir=PACKER(tmp_path),
                    allow_credentials_in_golden_image=True)
    assert any("golden image" in w and w.startswith("SECRET") for w in result.warnings)
    assert (tmp_path / "prod/packer/build.pkr.hcl").exists()


def test_render_and_bake_refuse_credentials_for_a_golden_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from kiln import lock as lockfile
    from kiln.cli import main

    config = CONFIG.replace('store: {type: dir, path: store, url: "https://artifacts.internal/kiln/"}',
                            "store: {type: s3, bucket: b, endpoint: 'http://127.0.0.1:9', "
                            "url_mode: sigv4}")
    write_tree(tmp_path, {"images.yaml": config, "ca.pem": CA,
                          "packer/node.pkr.hcl": 'source "null" "node" {}\n'})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SECRETKEY")
    lockfile.write(tmp_path / "dist/prod/images.lock.json", LOCK)
    assert main(["render", "--env", "prod"]) == 2
    assert "golden image" in capsys.readouterr().err
    assert not (tmp_path / "dist/prod/node").exists()
    assert main(["bake", "--env", "prod"]) == 2  # before building anything
    assert "golden image" in capsys.readouterr().err
    assert main(["render", "--env", "prod", "--allow-credentials-in-golden-image"]) == 0
    err = capsys.readouterr().err
    assert "warning: SECRET" in err and "golden image" in err
    assert "set sigv4_user AKIA:SECRETKEY" in (tmp_path / "dist/prod/node/images.data").read_text()


NODE_SETTINGS = """
    node: {stall_timeout: 2m, import_budget: 1h, retries: 3, retry_max_delay: 45s,
           on_import_failure: start-kubelet}
"""


def test_node_settings_reach_the_data_file_and_the_units(tmp_path: Path) -> None:
    config = CONFIG.replace(
        "    node: {ca_bundle: ca.pem, parallel: 3, containerd_timeout: 120, user_data_limit: "
        "65536}\n", NODE_SETTINGS.lstrip("\n"))
    write_tree(tmp_path, {"images.yaml": config, "ca.pem": CA,
                          "packer/node.pkr.hcl": 'source "null" "node" {}\n'})
    env = config_mod.load(tmp_path / "images.yaml").environment("prod")
    assert (env.node.stall_timeout, env.node.import_budget, env.node.retries,
            env.node.retry_max_delay, env.node.on_import_failure) == (
        120, 3600, 3, 45, "start-kubelet")
    render(env, LOCK, tmp_path / "dist", PlainLocator("https://a/"), packer_dir=PACKER(tmp_path))
    node = tmp_path / "dist/prod/node"
    data = (node / "images.data").read_text().splitlines()
    for line in ("set stall_timeout 120", "set import_budget 3600", "set retries 3",
                 "set retry_max_delay 45"):
        assert line in data
    unit = (node / "kiln-import.service").read_text()
    assert "Restart=on-failure" in unit and "StartLimitIntervalSec=0" in unit
    assert "TimeoutStartSec=7545" in unit  # 300 (containerd) + 45 + 2 * 3600
    assert "ExecStartPost" not in unit  # start-kubelet: kiln never starts kubelet itself
    dropin = (node / "10-kiln-import.conf").read_text()
    assert "After=kiln-import.service" in dropin
    assert not any(line.startswith(("Requires=", "ExecStartPre=")) for line in dropin.splitlines())
    raw = (tmp_path / "dist/prod/cloud-init/user-data").read_bytes()
    user_data = yaml.safe_load(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    assert user_data["runcmd"][0] == ["systemctl", "start", "kiln-import.service"]


def test_hold_kubelet_is_the_default_and_gates_kubelet(env: config_mod.Environment,
                                                       tmp_path: Path) -> None:
    assert env.node.on_import_failure == "hold-kubelet"
    render(env, LOCK, tmp_path, PlainLocator("https://a/"), packer_dir=PACKER(tmp_path))
    node = tmp_path / "prod/node"
    data = (node / "images.data").read_text().splitlines()
    for line in ("set stall_timeout 60", "set import_budget 1800", "set retries 8",
                 "set retry_max_delay 20"):
        assert line in data
    dropin = (node / "10-kiln-import.conf").read_text()
    # Requires= would fail kubelet's start job for good when the first import run fails
    assert not any(line.startswith("Requires=") for line in dropin.splitlines())
    assert "Wants=kiln-import.service" in dropin and "After=kiln-import.service" in dropin
    assert "ExecStartPre=/bin/sh -c 'systemctl is-active --quiet kiln-import.service || exec " \
           "/bin/sh /usr/local/lib/kiln/import-images --check " in dropin
    unit = (node / "kiln-import.service").read_text()
    assert "TimeoutStartSec=0" not in unit and "Restart=on-failure" in unit
    assert "--retry-state /run/kiln/failed-runs" in unit
    assert "systemctl --no-block start kubelet.service" in unit


@pytest.mark.parametrize(("setting", "message"), [
    ("stall_timeout: 0", "stall_timeout must be a duration"),
    ("stall_timeout: 2h", "stall_timeout must be a duration like 90, 90s, 30m or 2h, from 1s "
                          "to 3600s"),
    ("import_budget: forever", "import_budget must be a duration"),
    ("retry_max_delay: -5", "retry_max_delay must be a duration"),
    ("retries: 0", "retries must be between 1 and 1000"),
    ("retries: '3'", "retries must be an integer"),
    ("on_import_failure: wait", "on_import_failure must be one of hold-kubelet, start-kubelet"),
])
def test_node_settings_errors_point_at_the_value(tmp_path: Path, setting: str,
                                                 message: str) -> None:
    config = CONFIG.replace(
        "    node: {ca_bundle: ca.pem, parallel: 3, containerd_timeout: 120, user_data_limit: "
        "65536}\n", f"    node:\n      {setting}\n")
    write_tree(tmp_path, {"images.yaml": config, "ca.pem": CA})
    with pytest.raises(ConfigError) as info:
        config_mod.load(tmp_path / "images.yaml", "images.yaml")
    [problem] = info.value.problems
    column = 7 + len(setting.split(":")[0]) + 2
    assert (problem.line, problem.column) == (11, column), str(problem)
    assert message in problem.message


def test_locator_choice(env: config_mod.Environment) -> None:
    assert isinstance(locator_for(env), PlainLocator)
    s3 = config_mod.S3Store(bucket="b", endpoint="http://h:9000", url_mode="sigv4")
    from dataclasses import replace

    with pytest.raises(RenderError, match="AWS_ACCESS_KEY_ID"):
        locator_for(replace(env, store=s3), environ={})
    sig = locator_for(replace(env, store=s3), environ={"AWS_ACCESS_KEY_ID": "k",
                                                        "AWS_SECRET_ACCESS_KEY": "s"})
    assert isinstance(sig, SigV4Locator) and sig.url("k/x") == "http://h:9000/b/k/x"
    with pytest.raises(RenderError, match="url_mode plain needs"):
        locator_for(replace(env, store=replace(s3, url_mode="plain")))


def test_unknown_packer_source_is_refused(env: config_mod.Environment, tmp_path: Path) -> None:
    from dataclasses import replace

    other = replace(env, packer_sources=("source.qemu.missing",))
    with pytest.raises(RenderError, match=r"source\.qemu\.missing"):
        render(other, LOCK, tmp_path / "d", PlainLocator("https://a/"),
               packer_dir=tmp_path / "packer")


def test_inventory_errors_point_at_file_line_col(tmp_path: Path) -> None:
    path = tmp_path / "nodes.yaml"
    path.write_text("nodes:\n  - {hostname: cp-1, roles: [control-plane]}\n"
                    "  - {hostname: Bad_Host}\n  - {hostname: cp-1}\n  - {hostnam: x}\n"
                    "  - {hostname: w-1, roles: worker}\n")
    with pytest.raises(ConfigError) as info:
        load_inventory(path, "nodes.yaml")
    assert [str(p) for p in info.value.problems] == [
        "nodes.yaml:3:16: hostname 'Bad_Host' is not a lowercase RFC 1123 host name",
        "nodes.yaml:4:16: hostname 'cp-1' is already used (line 2)",
        "nodes.yaml:5:6: node: unknown key 'hostnam'",
        "nodes.yaml:5:5: node: missing hostname",
        "nodes.yaml:6:28: roles must be a list of strings",
    ]
    path.write_text("nodes:\n  - {hostname: a, roles: [w, c]}\n  - {hostname: b}\n")
    assert load_inventory(path) == [Node("a", ("c", "w")), Node("b", ())]


def test_presigned_with_packer_warns(env: config_mod.Environment, tmp_path: Path) -> None:
    class Client:
        def generate_presigned_url(self, op: str, Params: dict[str, str], ExpiresIn: int
                                   ) -> str:
            return f"https://s3/{Params['Key']}?X-Amz-Expires={ExpiresIn}"

    from dataclasses import replace

    s3_env = replace(env, store=config_mod.S3Store(bucket="b", ttl_seconds=3600))
    result = render(s3_env, LOCK, tmp_path, PresignedLocator(Client(), "b", 3600),
                    packer_dir=PACKER(tmp_path))
    assert any("expire after 3600 s" in w for w in result.warnings)
    assert "WARNING: url_mode presigned" in (tmp_path / "prod/packer/build.pkr.hcl").read_text()


def test_render_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    from kiln import lock as lockfile
    from kiln.cli import main

    write_tree(tmp_path, {"images.yaml": CONFIG, "ca.pem": CA,
                          "packer/node.pkr.hcl": 'source "null" "node" {}\n',
                          "nodes.yaml": "nodes:\n  - {hostname: w-1, roles: [worker]}\n"})
    monkeypatch.chdir(tmp_path)
    assert main(["render", "--env", "prod"]) == 1
    assert "no lock for prod" in capsys.readouterr().err
    lockfile.write(tmp_path / "dist/prod/images.lock.json", LOCK)
    assert main(["render", "--env", "prod", "--inventory", "nodes.yaml"]) == 0
    assert "rendered" in capsys.readouterr().err
    assert (tmp_path / "dist/prod/nodes/w-1/user-data").exists()
    (tmp_path / "nodes.yaml").write_text("nodes:\n  - {hostname: W1}\n")
    assert main(["render", "--env", "prod", "--inventory", "nodes.yaml"]) == 2
    assert capsys.readouterr().err.startswith("nodes.yaml:2:16: hostname 'W1'")


def test_a_node_that_states_its_platform_gets_only_its_lines(env: config_mod.Environment,
                                                             tmp_path: Path) -> None:
    from dataclasses import replace

    arm = replace(locked("dex", (), 3), name="dex", platform="linux/arm64",
                  manifest_digests=(("linux/arm64", "sha256:" + "9" * 64),))
    lock = replace(LOCK, images=(*LOCK.images, arm))
    render(env, lock, tmp_path, PlainLocator("https://a/"), packer_dir=PACKER(tmp_path),
           nodes=[Node("a-1", ("worker",), platform="linux/arm64"), Node("x-1", ("worker",))])
    arm_data = (tmp_path / "prod/nodes/a-1/user-data").read_text()
    every = (tmp_path / "prod/nodes/x-1/user-data").read_text()
    def platforms_of(text: str) -> list[str]:
        return [line.split()[-3] for line in text.splitlines()
                if line.strip().startswith("image dex ")]

    assert platforms_of(arm_data) == ["linux/arm64"]
    assert platforms_of(every) == ["linux/amd64", "linux/arm64"]
    with pytest.raises(RenderError, match=r"node w-1 \(line 0\): the lock has no linux/arm64 "
                                          r"image of registry"):
        render(env, lock, tmp_path, PlainLocator("https://a/"), packer_dir=PACKER(tmp_path),
               nodes=[Node("w-1", ("control-plane",), platform="linux/arm64")])


def test_the_user_data_importer_is_the_importer_without_its_comments(tmp_path: Path) -> None:
    """The compact copy in user-data runs the same program: every line that is not a comment
    is there in order, it passes shellcheck, and --help still prints the header."""
    import shutil
    import subprocess

    from kiln.render import IMPORTER

    full = (TEMPLATES / IMPORTER).read_text()
    compact = compact_shell(full)
    code = [line for line in full.splitlines() if not line.lstrip().startswith("#")]
    assert [line for line in compact.splitlines() if not line.lstrip().startswith("#")] == code
    assert "<<" not in "".join(code)  # no here-document whose lines could start with #
    assert len(compact) < 0.8 * len(full)
    script = tmp_path / "import-images"
    script.write_text(compact)
    assert shutil.which("shellcheck") is not None
    assert subprocess.run(["shellcheck", "-s", "sh", str(script)]).returncode == 0
    helped = subprocess.run(["sh", str(script), "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "import-images [--check]" in helped.stdout
