"""Argo CD Applications and ApplicationSets: the values Argo CD hands Helm, checked in place.

The manifests are written here in the shapes Argo CD documents (spec.source.helm with
valueFiles, values as a string, valuesObject, parameters; multi-source with a `ref:` values
source; an ApplicationSet template)."""

from __future__ import annotations

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
    environments:
      dev:
        registry: registry.example.com
        store: {type: dir, path: store}
        charts: [apps]
    """

REPO = {
    "charts/app/Chart.yaml": "name: app\n",
    "charts/app/values.yaml": """
        image:
          repository: docker.io/team/app
          tag: v1.1.0
        sidecar:
          image:
            repository: docker.io/team/app
            tag: v1.1.0
        """,
    "charts/app/values-prod.yaml": "sidecar:\n  image:\n"
                                   "    repository: registry.example.com/team/app\n",
    "values/pg.yaml": "image:\n  registry: registry.example.com\n  repository: team/postgresql\n"
                      "  tag: 16.4.0\n",
}

APPLICATION = """
    apiVersion: argoproj.io/v1alpha1
    kind: Application
    metadata:
      name: app
    spec:
      project: default
      source:
        repoURL: https://git.example.com/platform/deploy.git
        targetRevision: main
        path: charts/app
        helm:
          valueFiles:
            - values-prod.yaml
          values: |
            image:
              repository: registry.example.com/team/app
            sidecar:
              image:
                tag: v1.2.0
          parameters:
            - name: image.tag
              value: v1.2.0
      destination: {server: "https://kubernetes.default.svc", namespace: app}
    """

MULTI_SOURCE = """
    apiVersion: argoproj.io/v1alpha1
    kind: Application
    metadata:
      name: db
    spec:
      sources:
        - repoURL: https://charts.example.org/stable
          chart: postgresql
          targetRevision: 15.5.0
          helm:
            valueFiles:
              - $values/values/pg.yaml
        - repoURL: https://git.example.com/platform/deploy.git
          targetRevision: main
          ref: values
    """

APPLICATION_SET = """
    apiVersion: argoproj.io/v1alpha1
    kind: ApplicationSet
    metadata:
      name: apps
    spec:
      generators:
        - list:
            elements: [{cluster: a}, {cluster: b}]
      template:
        metadata:
          name: "app-{{cluster}}"
        spec:
          source:
            repoURL: https://charts.example.org/stable
            chart: app
            targetRevision: 1.2.0
            helm:
              values: |-
                image:
                  repository: registry.example.com/team/app
                  tag: v1.2.0
                  pullPolicy: IfNotPresent
                extraEnv:
                  - name: CLUSTER
                    value: "{{cluster}}"
    """


def run(root: Path, files: dict[str, str]) -> list[tuple[str, int, int, str, str]]:
    write_tree(root, {"images.yaml": IMAGES, **REPO, "apps/app.yaml": APPLICATION,
                      "apps/db.yaml": MULTI_SOURCE, "apps/set.yaml": APPLICATION_SET, **files})
    cfg = config.load(Path("images.yaml"), "images.yaml")
    return [(f.file, f.line, f.column, f.level, f.rule)
            for f in lint.run(cfg, cfg.environment("dev"))]


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_correct_applications_have_no_findings(tmp_path: Path) -> None:
    assert run(tmp_path, {}) == []


def test_a_wrong_value_in_the_values_string_is_found_on_the_manifest_line(tmp_path: Path
                                                                          ) -> None:
    wrong = APPLICATION.replace("repository: registry.example.com/team/app\n",
                                "repository: team/app\n")
    assert wrong != APPLICATION
    # line 16 of apps/app.yaml is `      repository: team/app` inside `values: |`
    assert run(tmp_path, {"apps/app.yaml": wrong}) == [
        ("apps/app.yaml", 16, 23, "error", "chart-mismatch")]


OBJECT = APPLICATION.replace("values: |\n", "valuesObject:\n")


def test_a_wrong_value_in_values_object_and_parameters(tmp_path: Path) -> None:
    assert run(tmp_path, {"apps/app.yaml": OBJECT}) == []
    wrong = OBJECT.replace("        tag: v1.2.0", "        tag: v1.2.1").replace(
        "value: v1.2.0", "value: latest")
    assert run(tmp_path, {"apps/app.yaml": wrong}) == [
        ("apps/app.yaml", 19, 18, "error", "chart-mismatch"),
        ("apps/app.yaml", 22, 18, "error", "chart-mismatch"),
    ]


def test_argo_cd_takes_values_object_over_the_values_string(tmp_path: Path) -> None:
    """Argo CD hands Helm `valuesObject` when it is set and ignores the `values` string
    (ApplicationSourceHelm.ValuesYAML): lint judges what Argo CD deploys, and says the string
    is ignored."""
    both = APPLICATION.replace("          parameters:", "          valuesObject:\n"
                               "            sidecar: {image: {tag: v1.2.0}}\n          parameters:")
    assert both != APPLICATION
    # the string's image.repository is ignored: the chart default is what Argo CD deploys
    assert run(tmp_path, {"apps/app.yaml": both}) == [
        ("apps/app.yaml", 14, 15, "warning", "image-unresolved"),
        ("charts/app/values.yaml", 2, 15, "error", "chart-mismatch")]


def test_an_absolute_value_file_is_the_repository_root_s(tmp_path: Path) -> None:
    """Argo CD reads `/envs/x.yaml` from the repository's root (ResolveValueFilePathOrUrl)."""
    rooted = APPLICATION.replace("- values-prod.yaml", "- /charts/app/values-prod.yaml")
    assert run(tmp_path, {"apps/app.yaml": rooted}) == []
    wrong = REPO["charts/app/values-prod.yaml"].replace("registry.example.com/team/app",
                                                        "docker.io/team/app")
    assert run(tmp_path, {"apps/app.yaml": rooted, "charts/app/values-prod.yaml": wrong}) == [
        ("charts/app/values-prod.yaml", 3, 17, "error", "chart-mismatch")]


def test_chart_defaults_under_an_application_count(tmp_path: Path) -> None:
    # without the parameter the chart's default tag v1.1.0 is what Argo CD deploys
    partial = APPLICATION.replace("          parameters:\n            - name: image.tag\n"
                                  "              value: v1.2.0\n", "")
    assert run(tmp_path, {"apps/app.yaml": partial}) == [
        ("charts/app/values.yaml", 3, 8, "error", "chart-mismatch")]


def test_ref_values_file_of_a_multi_source_application(tmp_path: Path) -> None:
    assert run(tmp_path, {"values/pg.yaml": REPO["values/pg.yaml"].replace("16.4.0",
                                                                           "16.3.0")}) == [
        ("values/pg.yaml", 4, 8, "error", "chart-mismatch")]
    missing = MULTI_SOURCE.replace("$values/values/pg.yaml", "$values/values/nope.yaml")
    assert run(tmp_path, {"apps/db.yaml": missing}) == [
        ("apps/db.yaml", 12, 13, "warning", "image-unresolved")]


def test_application_set_template_values(tmp_path: Path) -> None:
    wrong = APPLICATION_SET.replace("pullPolicy: IfNotPresent", "pullPolicy: Always")
    assert run(tmp_path, {"apps/set.yaml": wrong}) == [
        ("apps/set.yaml", 22, 27, "error", "pull-policy-always")]


def test_a_syntax_error_in_the_values_string_points_into_the_manifest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = "  repository: registry.example.com/team/app\n"
    broken = APPLICATION.replace(written, "  repository: [unclosed\n")
    assert broken != APPLICATION
    write_tree(tmp_path, {"images.yaml": IMAGES, **REPO, "apps/app.yaml": broken})
    assert main(["lint", "--env", "dev"]) == 2
    # libyaml reports an unclosed flow sequence where the string ends: the line after it
    assert capsys.readouterr().err.startswith("apps/app.yaml:17:16: YAML syntax error")


def test_a_templated_values_string_that_is_not_yaml_yet_is_a_warning(tmp_path: Path) -> None:
    templated = APPLICATION_SET.replace('value: "{{cluster}}"', "value: {{cluster}}-{{env}}")
    assert templated != APPLICATION_SET
    assert run(tmp_path, {"apps/set.yaml": templated}) == [
        ("apps/set.yaml", 18, 19, "warning", "image-unresolved")]


def test_paths_out_of_the_repository_are_not_read(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest may name `../..` or a symlink to elsewhere: lint reads only the repository it
    was given, so such a file is unresolved (a warning), never judged or read."""
    outside = tmp_path / "elsewhere"
    write_tree(outside, {"values.yaml": "image:\n  repository: docker.io/evil/app\n  tag: x\n",
                         "chart/Chart.yaml": "name: app\n",
                         "chart/values.yaml": "image:\n  repository: docker.io/evil/app\n"})
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    (repo / "linked.yaml").symlink_to(outside / "values.yaml")
    escapes = APPLICATION.replace("- values-prod.yaml", "- values-prod.yaml\n"
                                  "            - ../../../elsewhere/values.yaml\n"
                                  "            - ../../linked.yaml")
    db = MULTI_SOURCE.replace("$values/values/pg.yaml", "$values/../elsewhere/values.yaml")
    found = run(repo, {"apps/app.yaml": escapes, "apps/db.yaml": db})
    assert found == [("apps/app.yaml", 14, 11, "warning", "image-unresolved"),
                     ("apps/app.yaml", 15, 11, "warning", "image-unresolved"),
                     ("apps/db.yaml", 12, 13, "warning", "image-unresolved")]
    chart = APPLICATION.replace("path: charts/app", "path: ../elsewhere/chart")
    assert not any(f[0].startswith("..") or "elsewhere" in f[0]
                   for f in run(repo, {"apps/app.yaml": chart}))


def test_values_as_a_mapping_is_a_warning_not_silence(tmp_path: Path) -> None:
    mapped = APPLICATION.replace("values: |\n", "values:\n")
    assert mapped != APPLICATION
    # the warning points at the mapping; the chart's own default is judged without it
    assert run(tmp_path, {"apps/app.yaml": mapped}) == [
        ("apps/app.yaml", 15, 9, "warning", "image-unresolved"),
        ("charts/app/values.yaml", 2, 15, "error", "chart-mismatch"),
        ("charts/app/values.yaml", 7, 10, "error", "chart-mismatch")]
