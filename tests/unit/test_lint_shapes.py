"""Shapes real charts use that a first version of lint misread (an adversarial review against
public charts): each written here small, with a correct override (no finding) and a wrong
one (the right rule at the right place)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln import config, lint
from tests.helpers import write_tree

REG = "registry.example.com"


def lint_chart(root: Path, chart: dict[str, str], values: str, images: list[str],
               rendered: str = "") -> list[tuple[str, int, int, str, str]]:
    declared = "".join(f"  - {{name: i{n}, ref: {ref}, build: ctx}}\n"
                       for n, ref in enumerate(images))
    files = {f"c/{k}": v for k, v in chart.items()}
    write_tree(root, {**files, "v.yaml": values, "r/x.yaml": rendered or "{}\n"})
    (root / "images.yaml").write_text(
        f"version: 1\nimages:\n{declared}environments:\n  dev:\n    registry: {REG}\n"
        "    store: {type: dir, path: store}\n    charts: [r, {chart: c, values: [v.yaml]}]\n")
    cfg = config.load(Path("images.yaml"), "images.yaml")
    return [(f.file, f.line, f.column, f.level, f.rule)
            for f in lint.run(cfg, cfg.environment("dev"))]


def messages(root: Path) -> list[str]:
    cfg = config.load(Path("images.yaml"), "images.yaml")
    return [f.message for f in lint.run(cfg, cfg.environment("dev"))]


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


INGRESS = {"Chart.yaml": "name: ingress\n", "values.yaml": """
    global:
      image:
        registry: upstream.example.org
    controller:
      image:
        image: ingress/controller
        repository: ""
        tag: v1.15.1
    """}


def test_a_repository_is_used_as_written_not_under_the_global_registry(tmp_path: Path) -> None:
    right = f"controller:\n  image:\n    repository: {REG}/ingress/controller\n"
    assert lint_chart(tmp_path, INGRESS, right, [f"{REG}/ingress/controller:v1.15.1"]) == []
    wrong = f"controller:\n  image:\n    repository: {REG}/ingress/ctl\n"
    assert lint_chart(tmp_path, INGRESS, wrong, [f"{REG}/ingress/controller:v1.15.1"]) == [
        ("v.yaml", 3, 17, "error", "chart-undeclared")]


DEX = {"Chart.yaml": "name: dex\nappVersion: 2.44.0\n",
       "values.yaml": "image:\n  repository: upstream.example.org/dexidp/dex\n  tag: \"\"\n"}


def test_a_tag_from_app_version_is_only_a_warning(tmp_path: Path) -> None:
    # the chart's templates may render "v" + appVersion: values cannot tell
    values = f"image:\n  repository: {REG}/dexidp/dex\n"
    found = lint_chart(tmp_path, DEX, values, [f"{REG}/dexidp/dex:v2.44.0"])
    assert found == [("v.yaml", 2, 15, "warning", "chart-mismatch")]
    assert "appVersion" in messages(tmp_path)[0]
    pinned = values + "  tag: v2.44.0\n"
    assert lint_chart(tmp_path, DEX, pinned, [f"{REG}/dexidp/dex:v2.44.0"]) == []


OPTIONAL = {"Chart.yaml": "name: app\n", "values.yaml": f"""
    image: {{repository: {REG}/team/app, tag: v1}}
    metrics:
      enabled: false
      image: {{repository: upstream.example.org/exporter, tag: v0.15}}
    """}


def test_a_component_switched_off_is_not_checked(tmp_path: Path) -> None:
    assert lint_chart(tmp_path, OPTIONAL, "{}\n", [f"{REG}/team/app:v1"]) == []
    on = "metrics:\n  enabled: true\n"
    assert lint_chart(tmp_path, OPTIONAL, on, [f"{REG}/team/app:v1"]) == [
        ("c/values.yaml", 4, 10, "error", "chart-unreachable")]


CALICO = {"Chart.yaml": "name: cni\n", "values.yaml": """
    operator:
      image: tigera/operator
      registry: upstream.example.org
      version: v1.38.0
    ctl:
      image: upstream.example.org/calico/ctl
      tag: v3.30.0
    """}


def test_an_image_string_with_its_tag_or_version_beside_it(tmp_path: Path) -> None:
    images = [f"{REG}/tigera/operator:v1.38.0", f"{REG}/calico/ctl:v3.30.0"]
    right = f"operator: {{registry: {REG}}}\nctl: {{image: {REG}/calico/ctl}}\n"
    assert lint_chart(tmp_path, CALICO, right, images) == []
    wrong = f"operator: {{registry: {REG}, version: v1.38.1}}\nctl: {{image: {REG}/calico/ctl}}\n"
    assert lint_chart(tmp_path, CALICO, wrong, images) == [
        ("v.yaml", 1, 53, "error", "chart-mismatch")]


NOT_VENDORED = {"Chart.yaml": """
    name: app
    dependencies:
      - {name: redis-ha, condition: redis-ha.enabled}
    """, "values.yaml": f"""
    image: {{repository: {REG}/team/app, tag: v1}}
    redis-ha:
      enabled: false
      image: {{repository: upstream.example.org/redis, tag: 7}}
    """}


def test_a_dependency_not_vendored_keeps_its_values(tmp_path: Path) -> None:
    assert lint_chart(tmp_path, NOT_VENDORED, "{}\n", [f"{REG}/team/app:v1"]) == []
    on = "redis-ha:\n  enabled: true\n"
    assert lint_chart(tmp_path, NOT_VENDORED, on, [f"{REG}/team/app:v1"]) == [
        ("c/Chart.yaml", 3, 5, "warning", "image-unresolved")]


CERTS = {"Chart.yaml": "name: certs\nappVersion: v1.19.0\n", "values.yaml": """
    imageRegistry: quay.io
    imageNamespace: jetstack
    image:
      name: cert-manager-controller
      repository: ""
      tag: v1.19.0
    """}


def test_top_level_image_registry_and_namespace(tmp_path: Path) -> None:
    images = [f"{REG}/jetstack/cert-manager-controller:v1.19.0"]
    assert lint_chart(tmp_path, CERTS, f"imageRegistry: {REG}\n", images) == []
    # globals the chart does not declare are ignored by Helm: upstream stays
    assert lint_chart(tmp_path, CERTS, f"global: {{imageRegistry: {REG}}}\n", images) == [
        ("c/values.yaml", 4, 9, "error", "chart-mismatch")]


EXPORTER = {"Chart.yaml": "name: exporter\n", "values.yaml": """
    image:
      registry: quay.io
      repository: team/exporter
      tag: v0.15.0
    """}


def test_global_image_registry_counts_only_where_the_chart_declares_it(tmp_path: Path) -> None:
    images = [f"{REG}/team/exporter:v0.15.0"]
    assert lint_chart(tmp_path, EXPORTER, f"image: {{registry: {REG}}}\n", images) == []
    assert lint_chart(tmp_path, EXPORTER, f"global: {{imageRegistry: {REG}}}\n", images) == [
        ("c/values.yaml", 3, 15, "error", "chart-mismatch")]


def test_invalid_references_are_errors(tmp_path: Path) -> None:
    bitnami = {"Chart.yaml": "name: kc\n", "values.yaml": """
        global: {imageRegistry: ""}
        image: {registry: docker.io, repository: team/kc, tag: 26.1.0}
        """}
    found = lint_chart(tmp_path, bitnami, f"global: {{imageRegistry: \"{REG}/\"}}\n",
                       [f"{REG}/team/kc:26.1.0"],
                       rendered=f"spec:\n  containers:\n    - image: {REG}/Team/X:1\n")
    assert found == [("r/x.yaml", 3, 14, "error", "chart-invalid-ref"),
                     ("v.yaml", 1, 25, "error", "chart-invalid-ref")]


ARGO = {"Chart.yaml": "name: argo\nappVersion: v3.4.4\n", "values.yaml": """
    global:
      image:
        repository: quay.io/argoproj/argocd
        tag: ""
        imagePullPolicy: IfNotPresent
    controller:
      image: {repository: "", tag: ""}
    dex:
      image: {repository: upstream.example.org/dexidp/dex, tag: v2.44.0,
              imagePullPolicy: IfNotPresent}
    """}


def test_a_global_default_image_and_policies_inside_and_beside(tmp_path: Path) -> None:
    images = [f"{REG}/argoproj/argocd:v3.4.4", f"{REG}/dexidp/dex:v2.44.0"]
    right = (f"global: {{image: {{repository: {REG}/argoproj/argocd, tag: v3.4.4}}}}\n"
             f"dex: {{image: {{repository: {REG}/dexidp/dex}}}}\n")
    assert lint_chart(tmp_path, ARGO, right, images) == []
    left = f"dex: {{image: {{repository: {REG}/dexidp/dex, imagePullPolicy: Always}}}}\n"
    assert lint_chart(tmp_path, ARGO, left, images) == [
        # global.image left upstream, and the controller that defaults to it: where it is set
        ("c/values.yaml", 3, 17, "error", "chart-mismatch"),
        ("c/values.yaml", 3, 17, "error", "chart-mismatch"),
        ("v.yaml", 1, 77, "error", "pull-policy-always"),  # inside the map
    ]
    assert any("(values: argo: controller.image)" in m for m in messages(tmp_path))
    beside = {"Chart.yaml": "name: g\n", "values.yaml": f"""
        sidecar:
          image: {{repository: {REG}/dexidp/dex, tag: v2.44.0}}
          imagePullPolicy: Always
        """}
    assert lint_chart(tmp_path, beside, "{}\n", images) == [
        ("c/values.yaml", 3, 20, "error", "pull-policy-always")]


def test_sha_is_a_digest(tmp_path: Path) -> None:
    digest = "a" * 64
    chart = {"Chart.yaml": "name: kps\n", "values.yaml": f"""
        operator:
          image: {{registry: {REG}, repository: team/operator, tag: v0.80.0, sha: ""}}
        """}
    images = [f"{REG}/team/operator:v0.80.0"]
    assert lint_chart(tmp_path, chart, "{}\n", images) == []
    pinned = f"operator: {{image: {{sha: {digest}, tag: v0.80.1}}}}\n"
    assert lint_chart(tmp_path, chart, pinned, images) == [
        ("v.yaml", 1, 96, "error", "chart-mismatch")]
    assert f"v0.80.1@sha256:{digest}'" in messages(tmp_path)[0]


def test_a_flag_given_an_image_without_image_in_its_name(tmp_path: Path) -> None:
    rendered = """
        spec:
          containers:
            - image: registry.example.com/team/app:v1
              args:
                - --config-reloader=upstream.example.org/team/reloader:v0.80.0
                - --listen=0.0.0.0:8080
                - --config=/etc/app/config.yaml
                - --url=https://upstream.example.org/a:b
        """
    chart = {"Chart.yaml": "name: x\n", "values.yaml": "{}\n"}
    assert lint_chart(tmp_path, chart, "{}\n", [f"{REG}/team/app:v1"], rendered) == [
        ("r/x.yaml", 5, 29, "warning", "chart-unreachable")]


def test_one_global_override_names_each_image_it_sets(tmp_path: Path) -> None:
    sub = "global: {imageRegistry: \"\"}\nimage: {repository: team/proxy, tag: v1}\n"
    chart = {"Chart.yaml": "name: kps\n", "values.yaml": "{}\n",
             "charts/a/Chart.yaml": "name: a\n", "charts/a/values.yaml": sub,
             "charts/b/Chart.yaml": "name: b\n", "charts/b/values.yaml": sub}
    found = lint_chart(tmp_path, chart, f"global: {{imageRegistry: {REG}}}\n",
                       [f"{REG}/team/app:v1"])
    assert found == [("v.yaml", 1, 25, "error", "chart-undeclared")] * 2
    said = messages(tmp_path)
    assert said[0].endswith("(values: a: image)") and said[1].endswith("(values: b: image)")
