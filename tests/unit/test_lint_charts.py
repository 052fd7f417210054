"""Charts as real deploy repos hold them: dependencies (alias, condition, tags, packaged
subcharts), chart-wide pull policies, images in arguments and variables, images nobody bakes."""

from __future__ import annotations

import io
import tarfile
import textwrap
from pathlib import Path

import pytest

from kiln import config, lint
from kiln.cli import main
from tests.helpers import write_tree

IMAGES = """
    version: 1
    images:
      - {name: app, ref: registry.example.com/team/app:v1.2.0, build: ctx}
      - {name: pg, ref: registry.example.com/team/postgresql:16.4.0, build: ctx}
      - {name: cache, ref: registry.example.com/team/cache:7.4.0, build: ctx}
    environments:
      dev:
        registry: registry.example.com
        store: {type: dir, path: store}
        charts: [rendered, {chart: vendor/app, values: [values/app.yaml]}]
    """

PG_VALUES = """
    image:
      registry: docker.io
      repository: team/postgresql
      tag: 16.3.0
    """

CHART = {
    "vendor/app/Chart.yaml": """
        name: app
        appVersion: v1.2.0
        dependencies:
          - name: postgresql
            alias: primary
            condition: primary.enabled,global.databases
          - name: postgresql
            alias: replica
            condition: replica.enabled
          - name: cache
            tags: [caching]
        """,
    "vendor/app/values.yaml": """
        image:
          repository: docker.io/team/app
        primary:
          enabled: true
        replica:
          enabled: false
        tags:
          caching: false
        """,
    # the folder is named after the package; the scope comes from Chart.yaml's name/alias
    "vendor/app/charts/postgresql-15.5.0/Chart.yaml": "name: postgresql\n",
    "vendor/app/charts/postgresql-15.5.0/values.yaml": PG_VALUES,
    "vendor/app/charts/cache/Chart.yaml": "name: cache\n",
    "vendor/app/charts/cache/values.yaml": "image: {repository: docker.io/team/cache, tag: 7.0}\n",
}

RIGHT = textwrap.dedent("""
    image:
      repository: registry.example.com/team/app
    primary:
      image:
        registry: registry.example.com
        tag: 16.4.0
    """).lstrip()


def run(root: Path, files: dict[str, str], *, values: str = RIGHT, chart: bool = True
        ) -> list[tuple[str, int, int, str, str]]:
    write_tree(root, {"images.yaml": IMAGES, **(CHART if chart else {}), "values/app.yaml": values,
                      "rendered/.keep.yaml": "{}\n", **files})
    cfg = config.load(Path("images.yaml"), "images.yaml")
    return [(f.file, f.line, f.column, f.level, f.rule)
            for f in lint.run(cfg, cfg.environment("dev"))]


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_disabled_dependencies_are_not_deployed(tmp_path: Path) -> None:
    # replica (condition false) and cache (its only tag false) keep upstream defaults: unseen
    assert run(tmp_path, {}) == []


def test_alias_scopes_values_and_conditions_decide(tmp_path: Path) -> None:
    on = RIGHT + "replica:\n  enabled: true\n"
    assert run(tmp_path, {}, values=on) == [
        ("vendor/app/charts/postgresql-15.5.0/values.yaml", 3, 15, "error", "chart-mismatch")]


def test_the_first_condition_that_is_set_wins(tmp_path: Path) -> None:
    # primary.enabled deleted: global.databases decides (false: the wrong default is unseen)
    off = RIGHT.replace("primary:\n", "global: {databases: false}\nprimary:\n  enabled: null\n"
                        "  image: {tag: 1}\n  x: 1\n", 1)
    assert run(tmp_path, {}, values=off) == []


def test_a_tag_turns_a_dependency_on(tmp_path: Path) -> None:
    found = run(tmp_path, {}, values=RIGHT + "tags:\n  caching: true\n")
    assert found == [("vendor/app/charts/cache/values.yaml", 1, 21, "error", "chart-mismatch")]


def _package(files: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, text in files.items():
            data = textwrap.dedent(text).lstrip("\n").encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_packaged_subcharts_are_read_from_the_archive(tmp_path: Path) -> None:
    write_tree(tmp_path, CHART)
    folder = tmp_path / "vendor/app/charts/postgresql-15.5.0"
    for name in ("Chart.yaml", "values.yaml"):
        (folder / name).unlink()
    folder.rmdir()
    (tmp_path / "vendor/app/charts/postgresql-15.5.0.tgz").write_bytes(_package({
        "postgresql/Chart.yaml": "name: postgresql\n", "postgresql/values.yaml": PG_VALUES,
        "postgresql/templates/x.yaml": "{{ broken", "../evil/values.yaml": "image: x\n"}))
    assert run(tmp_path, {}, chart=False) == []
    wrong = RIGHT.replace("tag: 16.4.0", "tag: 16.4.1")
    assert run(tmp_path, {}, values=wrong, chart=False) == [
        ("values/app.yaml", 6, 10, "error", "chart-mismatch")]
    default = RIGHT.replace("    tag: 16.4.0\n", "")
    assert run(tmp_path, {}, values=default, chart=False) == [
        ("vendor/app/charts/postgresql-15.5.0.tgz/postgresql/values.yaml", 4, 8, "error",
         "chart-mismatch")]


def test_a_broken_package_is_a_config_error(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    write_tree(tmp_path, {"images.yaml": IMAGES, **CHART, "values/app.yaml": RIGHT,
                          "rendered/a.yaml": "{}\n"})
    (tmp_path / "vendor/app/charts/broken-1.0.0.tgz").write_bytes(b"\x1f\x8bnot gzip")
    assert main(["lint", "--env", "dev"]) == 2
    assert capsys.readouterr().err.startswith(
        "vendor/app/charts/broken-1.0.0.tgz:1:1: not a readable chart archive")


def test_a_dependency_not_vendored_is_said(tmp_path: Path) -> None:
    files = {"vendor/app/Chart.yaml": CHART["vendor/app/Chart.yaml"] + "  - name: redis\n"}
    assert run(tmp_path, files) == [("vendor/app/Chart.yaml", 12, 5, "warning",
                                     "image-unresolved")]


def test_chart_wide_pull_policy(tmp_path: Path) -> None:
    found = run(tmp_path, {}, values=RIGHT + "imagePullPolicy: Always\n")
    assert found == [("values/app.yaml", 7, 18, "error", "pull-policy-always")]
    # global reaches the subcharts; a policy beside the image wins over it
    shared = RIGHT.replace("image:\n  repository", "image:\n  pullPolicy: IfNotPresent\n"
                           "  repository") + "global:\n  imagePullPolicy: Always\n"
    assert run(tmp_path, {}, values=shared) == [
        ("values/app.yaml", 9, 20, "error", "pull-policy-always")]


def test_chart_wide_pull_policy_in_a_plain_values_file(tmp_path: Path) -> None:
    plain = "imagePullPolicy: Always\nweb:\n  image: registry.example.com/team/app:v1.2.0\n"
    assert run(tmp_path, {"rendered/values.yaml": plain}) == [
        ("rendered/values.yaml", 1, 18, "error", "pull-policy-always")]


MANIFEST = """
    apiVersion: v1
    kind: Pod
    spec:
      initContainers:
        - name: wait
          image: docker.io/library/busybox:1.36
      ephemeralContainers:
        - name: debug
          image: registry.example.com/team/app:v1.2.1
      containers:
        - name: operator
          image: registry.example.com/team/app:v1.2.0
          args:
            - --helper-image=docker.io/library/alpine:3.20
            - "--cache-image=registry.example.com/team/cache:7.4.0"
            - --pg-image
            - registry.example.com/team/postgresql:16.3.0
            - --image-pull-policy=Always
            - --shell-image=$(SHELL_IMAGE)
          env:
            - {name: SHELL_IMAGE, value: quay.io/team/shell:v1}
            - {name: RELATED_IMAGE_PG, value: registry.example.com/team/postgresql:16.4.0}
            - {name: IMAGE_PULL_SECRET, value: quay.io/not/an-image:v1}
        - name: after-an-argument-still-an-error
          image: docker.io/library/nginx:1.27
    """


def test_rendered_manifests_containers_arguments_and_variables(tmp_path: Path) -> None:
    write_tree(tmp_path, {"rendered/pod.yaml": MANIFEST})
    found = run(tmp_path, {"rendered/pod.yaml": MANIFEST})
    assert found == [
        ("rendered/pod.yaml", 6, 14, "error", "chart-unreachable"),
        ("rendered/pod.yaml", 9, 14, "error", "chart-mismatch"),
        ("rendered/pod.yaml", 14, 26, "warning", "chart-unreachable"),
        ("rendered/pod.yaml", 17, 11, "warning", "chart-mismatch"),
        ("rendered/pod.yaml", 21, 38, "warning", "chart-unreachable"),
        ("rendered/pod.yaml", 25, 14, "error", "chart-unreachable"),
    ]
    cfg = config.load(Path("images.yaml"), "images.yaml")
    messages = {f.line: f.message for f in lint.run(cfg, cfg.environment("dev"))}
    assert messages[14].endswith("(in an argument)")
    assert messages[21].endswith("(in an environment variable)")
    assert "cannot pull it" in messages[6]


def test_chart_unreachable_level_is_configurable(tmp_path: Path) -> None:
    lowered = IMAGES.replace("charts: [", "lint: {levels: {chart-unreachable: warning}}\n"
                                         "        charts: [")
    found = run(tmp_path, {"images.yaml": lowered, "rendered/pod.yaml": MANIFEST})
    assert ("rendered/pod.yaml", 6, 14, "warning", "chart-unreachable") in found


def _bomb() -> str:
    lines = ["a0: &a0 {x: 1, y: 2}"]
    lines += [f"a{i}: &a{i} {{k1: *a{i - 1}, k2: *a{i - 1}, k3: *a{i - 1}}}" for i in range(1, 30)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("values", "said"), [
    (_bomb(), "vendor/app/values.yaml:13:"),  # refused once past the weight cap, not hung
    ("".join("  " * i + f"k{i}:\n" for i in range(100)) + "  " * 100 + "x: 1\n",
     "vendor/app/values.yaml:65:129: mappings nested more than 64 deep"),
    ("a: &a\n  <<: 5\n", "vendor/app/values.yaml:2:7: YAML syntax error"),
])
def test_hostile_chart_values_are_refused_where_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], values: str, said: str) -> None:
    write_tree(tmp_path, {"images.yaml": IMAGES, **CHART, "values/app.yaml": RIGHT,
                          "rendered/a.yaml": "{}\n"})
    (tmp_path / "vendor/app/values.yaml").write_text(values)
    assert main(["lint", "--env", "dev"]) == 2
    assert capsys.readouterr().err.startswith(said)


def test_a_symlinked_subchart_is_read_and_a_loop_ends(tmp_path: Path) -> None:
    """Monorepos link a shared subchart into charts/ (Helm follows the link); a link that
    points back up must not loop."""
    write_tree(tmp_path, CHART)
    folder = tmp_path / "vendor/app/charts/postgresql-15.5.0"
    shared = tmp_path / "shared/postgresql"
    shared.parent.mkdir()
    folder.rename(shared)
    folder.symlink_to(shared)
    (shared / "charts").mkdir()
    (shared / "charts/loop").symlink_to(shared)
    wrong = RIGHT.replace("    tag: 16.4.0\n", "")
    assert run(tmp_path, {}, values=wrong, chart=False) == [
        ("vendor/app/charts/postgresql-15.5.0/values.yaml", 4, 8, "error", "chart-mismatch")]
