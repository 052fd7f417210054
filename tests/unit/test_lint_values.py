"""Effective chart values and the image conventions: each convention, right and wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln import config, lint
from kiln.errors import ConfigError
from tests.helpers import write_tree

CHARTS = {
    # repository/tag map, vendored defaults pointing upstream; appVersion as default tag
    "vendor/core/Chart.yaml": "name: core\nappVersion: v2.11.0\n",
    "vendor/core/values.yaml": """
        core:
          image:
            repository: docker.io/example/core
            tag: v2.10.0
        jobs:
          image:
            repository: docker.io/example/jobs
        """,
    # Bitnami: global.imageRegistry, a subchart scoped by name
    "vendor/db/Chart.yaml": "name: db\n",
    "vendor/db/values.yaml": "global:\n  imageRegistry: \"\"\n",
    "vendor/db/charts/postgresql/Chart.yaml": "name: postgresql\n",
    "vendor/db/charts/postgresql/values.yaml": """
        global:
          imageRegistry: ""
        image:
          registry: docker.io
          repository: example/postgresql
          tag: 16.3.0
        """,
    # ingress-nginx: image-keyed map, global.image.registry
    "vendor/ingress/Chart.yaml": "name: ingress\n",
    "vendor/ingress/values.yaml": """
        global:
          image:
            registry: upstream.example.org
        controller:
          image:
            image: ingress/controller
            tag: v1.11.2
        """,
    # cert-manager: imageRegistry / imageNamespace / name
    "vendor/certs/Chart.yaml": "name: certs\nappVersion: v1.16.0\n",
    "vendor/certs/values.yaml": """
        global:
          imageRegistry: quay.io
          imageNamespace: jetstack
        image:
          name: cert-manager-controller
        """,
}

IMAGES = """
    version: 1
    images:
      - {name: core, ref: registry.example.com/example/core:v2.11.0, build: ctx}
      - {name: jobs, ref: registry.example.com/example/jobs:v2.11.0, build: ctx}
      - {name: pg, ref: registry.example.com/example/postgresql:16.4.0, build: ctx}
      - {name: ctl, ref: registry.example.com/ingress/controller:v1.11.2, build: ctx}
      - {name: cm, ref: registry.example.com/jetstack/cert-manager-controller:v1.16.0,
         build: ctx}
    environments:
      dev:
        registry: registry.example.com
        store: {type: dir, path: store}
        charts:
          - {chart: vendor/core, values: [values/core.yaml]}
          - {chart: vendor/db, values: [values/db.yaml]}
          - {chart: vendor/ingress, values: [values/ingress.yaml]}
          - {chart: vendor/certs, values: [values/certs.yaml]}
    """

RIGHT = {
    "values/core.yaml": """
        core:
          image:
            repository: registry.example.com/example/core
            tag: v2.11.0
        jobs:
          image:
            repository: registry.example.com/example/jobs
        """,
    "values/db.yaml": """
        global:
          imageRegistry: registry.example.com
        postgresql:
          image:
            tag: 16.4.0
        """,
    "values/ingress.yaml": "global:\n  image:\n    registry: registry.example.com\n",
    "values/certs.yaml": "global:\n  imageRegistry: registry.example.com\n",
}


def findings(root: Path, overrides: dict[str, str]) -> list[tuple[str, int, int, str]]:
    write_tree(root, {"images.yaml": IMAGES, **CHARTS, **RIGHT, **overrides})
    cfg = config.load(Path("images.yaml"), "images.yaml")
    return [(f.file, f.line, f.column, f.rule) for f in lint.run(cfg, cfg.environment("dev"))]


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_correct_overrides_hide_vendored_defaults(tmp_path: Path) -> None:
    assert findings(tmp_path, {}) == []


@pytest.mark.parametrize(("path", "text", "expected"), [
    ("values/core.yaml", "core:\n  image:\n    repository: registry.example.com/example/core\n"
     "    tag: v2.11.1\n", ("values/core.yaml", 4, 10, "chart-mismatch")),
    ("values/db.yaml", "global:\n  imageRegistry: registry.example.com\npostgresql:\n"
     "  image:\n    tag: 16.4.1\n", ("values/db.yaml", 5, 10, "chart-mismatch")),
    ("values/ingress.yaml", "global:\n  image:\n    registry: registry.example.com\n"
     "controller:\n  image:\n    tag: v1.11.3\n", ("values/ingress.yaml", 6, 10, "chart-mismatch")),
    ("values/certs.yaml", "global:\n  imageRegistry: registry.example.com\n"
     "image:\n  name: cert-manager-cainjector\n",
     ("values/certs.yaml", 4, 9, "chart-undeclared")),
    ("values/certs.yaml", "image: registry.example.com/jetstack/cert-manager-controller\n",
     ("values/certs.yaml", 1, 8, "chart-mismatch")),
    ("values/core.yaml", "core:\n  image: registry.example.com/example/core:v2.11\n"
     "jobs:\n  image:\n    <<: {repository: registry.example.com/example/jobs}\n",
     ("values/core.yaml", 2, 10, "chart-mismatch")),
])
def test_wrong_override_found_where_written(tmp_path: Path, path: str, text: str,
                                            expected: tuple[str, int, int, str]) -> None:
    assert expected in findings(tmp_path, {path: text})


def test_default_nobody_overrode_points_at_the_chart(tmp_path: Path) -> None:
    found = findings(tmp_path, {"values/certs.yaml": "{}\n"})
    assert found == [("vendor/certs/values.yaml", 5, 9, "chart-mismatch")]


def test_null_deletes_and_unresolved_map_warns(tmp_path: Path) -> None:
    jobs = "jobs:\n  image:\n    repository: registry.example.com/example/jobs\n"
    core = "core:\n  image:\n    repository: null\n"
    found = findings(tmp_path, {"values/core.yaml": core + jobs})
    assert found == [("values/core.yaml", 3, 5, "image-unresolved")]


def test_missing_values_file_is_a_config_error(tmp_path: Path) -> None:
    write_tree(tmp_path, {"images.yaml": IMAGES, **CHARTS})
    cfg = config.load(Path("images.yaml"), "images.yaml")
    with pytest.raises(ConfigError, match="values: no such file"):
        lint.run(cfg, cfg.environment("dev"))


def test_chart_entry_is_checked_where_written(tmp_path: Path) -> None:
    bad = IMAGES.replace("{chart: vendor/certs, values: [values/certs.yaml]}",
                         "{chart: vendor/certs, value: [values/certs.yaml]}")
    write_tree(tmp_path, {"images.yaml": bad, **CHARTS, **RIGHT})
    with pytest.raises(ConfigError) as caught:
        config.load(Path("images.yaml"), "images.yaml")
    assert "images.yaml:17:31" in str(caught.value)


def test_chart_without_chart_yaml_is_a_config_error(tmp_path: Path) -> None:
    write_tree(tmp_path, {"images.yaml": IMAGES, **CHARTS, **RIGHT})
    (tmp_path / "vendor/certs/Chart.yaml").unlink()
    cfg = config.load(Path("images.yaml"), "images.yaml")
    with pytest.raises(ConfigError, match=r"images\.yaml:17:17: chart: no Chart\.yaml"):
        lint.run(cfg, cfg.environment("dev"))


def test_chart_still_on_the_upstream_source(tmp_path: Path) -> None:
    pulled = IMAGES.replace(
        "{name: ctl, ref: registry.example.com/ingress/controller:v1.11.2, build: ctx}",
        "{name: ctl, ref: registry.example.com/ingress/controller:v1.11.2,\n"
        "         pull: upstream.example.org/k8s/ingress-controller:v1.11.2}")
    values = "controller:\n  image:\n    image: k8s/ingress-controller\n"
    write_tree(tmp_path, {"images.yaml": pulled, **CHARTS, **RIGHT, "values/ingress.yaml": values})
    cfg = config.load(Path("images.yaml"), "images.yaml")
    found = [f for f in lint.run(cfg, cfg.environment("dev")) if f.rule.startswith("chart")]
    assert [(f.file, f.line, f.rule) for f in found] == [
        ("values/ingress.yaml", 3, "chart-upstream")]
    assert "should be 'registry.example.com/ingress/controller:v1.11.2'" in found[0].message


def test_images_in_lists_of_containers(tmp_path: Path) -> None:
    extra = RIGHT["values/certs.yaml"] + ("extraContainers:\n  - name: x\n    image: "
                                          "registry.example.com/jetstack/other:v1\n")
    assert findings(tmp_path, {"values/certs.yaml": extra}) == [
        ("values/certs.yaml", 5, 12, "chart-undeclared")]


def test_templated_values_are_left_alone(tmp_path: Path) -> None:
    templated = RIGHT["values/certs.yaml"] + "image:\n  name: \"{{ .Values.x }}\"\n"
    assert findings(tmp_path, {"values/certs.yaml": templated}) == []
