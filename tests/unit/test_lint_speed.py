"""Issue 12, speed: lint composes chart files with libyaml's C loader; positions stay exact.

Each case runs with the C loader and again without it (as with a PyYAML built without
libyaml): findings and errors must name the same file:line:col.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import yaml

from kiln import config, lint, refs, yamlio
from kiln.errors import ConfigError
from tests.helpers import write_tree

T = TypeVar("T")
needs_libyaml = pytest.mark.skipif(not hasattr(yaml, "CSafeLoader"),
                                   reason="PyYAML built without libyaml")
REG = "registry.example.com/foundation"

IMAGES = f"""
    version: 1
    images:
      - {{name: app, ref: {REG}/app:v1, build: ctx}}
      - {{name: db, ref: {REG}/db:v2, build: ctx}}
    environments:
      dev:
        registry: registry.example.com
        store: {{type: dir, path: store}}
        charts:
          - manifests
          - {{chart: vendor/db, values: [values/db.yaml]}}
    """

# What moves columns or lines if a loader counts differently: a BOM, CRLF, non-ASCII and
# astral characters before a value, block scalars, multi-line quoted strings, aliases,
# several documents (empty ones too), flow maps, merge keys.
TREE = {
    "manifests/app.yaml": "\ufeff# caf\u00e9 \u65e5\u672c\r\nkind: Pod\r\nspec:\r\n"
                          "  containers:\r\n    - {name: \"\u65e5\u672c\U0001f600\", "
                          "image: \"app:v1\"}\r\n",
    "manifests/multi.yaml": f"""
        ---
        ---
        kind: ConfigMap
        data:
          conf: |
            image: {REG}/nope:v1
            \u00e9t\u00e9 \U0001f600
          more: >-
            folded
            text
        ---
        kind: Deployment
        spec:
          template:
            spec:
              initContainers:
                - name: a
                  image: &db "{REG}/db:v3"
                  imagePullPolicy: Always
              containers:
                - {{name: b, image: *db, x: "\u00fc\U0001f600"}}
                - name: c
                  image: "{REG}/app:\\
                    v2"
        ...
        """,
    "vendor/db/Chart.yaml": "name: db\nappVersion: v2\n",
    "vendor/db/values.yaml": """
        # d\u00e9faut \U0001f600
        image: {repository: docker.io/upstream/db}
        """,
    "values/db.yaml": "# \u00fcberschrieben\r\nimage: {<<: {registry: registry.example.com, "
                      "repository: foundation/db}, x: \"\u00fc\U0001f600\", tag: v9}\r\n",
}


def both_loaders(monkeypatch: pytest.MonkeyPatch, run: Callable[[], T]) -> tuple[T, T]:
    """``run()`` with libyaml's loader, then with yaml.CSafeLoader gone."""
    fast = run()
    with monkeypatch.context() as patch:
        patch.delattr(yaml, "CSafeLoader", raising=False)
        pure = run()
    return fast, pure


def findings() -> list[tuple[str, int, int, str]]:
    cfg = config.load(Path("images.yaml"), "images.yaml")
    return [(f.file, f.line, f.column, f.rule) for f in lint.run(cfg, cfg.environment("dev"))]


def config_error() -> tuple[str, int, int, str]:
    with pytest.raises(ConfigError) as caught:
        findings()
    problem = caught.value.problems[0]
    return problem.path, problem.line, problem.column, problem.message


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_tree(tmp_path, {"images.yaml": IMAGES, **TREE})
    for name in ("manifests/app.yaml", "values/db.yaml"):  # write_tree would dedent them
        (tmp_path / name).write_bytes(TREE[name].encode())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_both_loaders_find_the_same_places(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, pure = both_loaders(monkeypatch, findings)
    assert fast == pure
    assert fast == [
        ("manifests/app.yaml", 5, 28, "chart-mismatch"),  # after an emoji, CRLF lines, a BOM
        ("manifests/multi.yaml", 18, 18, "chart-mismatch"),  # and *db, the same: said once
        ("manifests/multi.yaml", 19, 28, "pull-policy-always"),
        ("manifests/multi.yaml", 23, 18, "chart-mismatch"),  # a string continued by "\\"
        ("values/db.yaml", 2, 88, "chart-mismatch"),  # the override's tag, after an emoji
    ]


@needs_libyaml
def test_lint_composes_chart_files_with_libyaml(tree: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    composed: list[str] = []

    class Spy(yaml.CSafeLoader):  # type: ignore[misc]
        def __init__(self, stream: str) -> None:
            composed.append(stream.splitlines()[0] if stream else "")
            super().__init__(stream)

    monkeypatch.setattr(yaml, "CSafeLoader", Spy)
    findings()
    # two manifests, Chart.yaml, the chart's values and the override; images.yaml stays pure
    assert len(composed) == 5
    assert not any(line.startswith("version: 1") for line in composed)


ERRORS = [  # (file text, line, column, message start), the same with either loader
    pytest.param(b"a: [\n", 2, 1, "YAML syntax error: while parsing a flow node",
                 id="syntax"),
    pytest.param("\u00e9\U0001f600: 'x'\nb: c: d\n".encode(), 2, 5,
                 "YAML syntax error: mapping values", id="syntax-after-non-ascii"),
    pytest.param(b"a: 1\r\nb: [\r\n", 3, 1, "YAML syntax error: while parsing a flow node",
                 id="syntax-crlf"),
    pytest.param(b"a: 'abc\n", 2, 1, "YAML syntax error: while scanning a quoted scalar",
                 id="unclosed-quote"),
    pytest.param(b"a: *x\n", 1, 4, "YAML syntax error: found undefined alias", id="alias"),
    pytest.param(b"a: 1\nb: caf\xe9\n", 2, 7, "not valid UTF-8", id="utf-8"),
    pytest.param(b"a: 1\nb: x\x07y\n", 2, 5, "unacceptable character #x0007", id="control"),
    pytest.param("# \u65e5\u672c\U0001f600\nb: \u00fc\x01\n".encode(), 2, 5,
                 "unacceptable character #x0001", id="control-after-non-ascii"),
    pytest.param(b"a:\n\tb: 1\n", 2, 1, "YAML syntax error: while scanning", id="tab-indent"),
    pytest.param(b"a: |\n  x\n\ty\n", 3, 1, "YAML syntax error: while scanning",
                 id="tab-in-block-scalar"),
]
WHERE = ["manifests/app.yaml", "values/db.yaml", "vendor/db/values.yaml", "vendor/db/Chart.yaml"]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize(("data", "line", "column", "message"), ERRORS)
def test_errors_name_the_same_place_with_both_loaders(
        tree: Path, monkeypatch: pytest.MonkeyPatch, where: str, data: bytes, line: int,
        column: int, message: str) -> None:
    (tree / where).write_bytes(data)
    fast, pure = both_loaders(monkeypatch, config_error)
    for path, at_line, at_column, text in (fast, pure):
        assert (path, at_line, at_column) == (where, line, column)
        assert text.startswith(message)


@needs_libyaml
def test_libyaml_reads_tabs_where_yaml_allows_them() -> None:
    """Tabs separating tokens are YAML (Helm reads them); the pure loader refuses them."""
    text = b"a:\n  b:\t1\n  c: [x,\n\ty]\n"
    assert len(yamlio.compose_documents(text, "f", fast=True)) == 1
    with pytest.raises(ConfigError, match="found character '\\\\t'"):
        yamlio.compose_documents(text, "f")


def test_gc_is_paused_only_for_the_block() -> None:
    assert gc.isenabled()
    with pytest.raises(ValueError), yamlio.gc_paused():
        assert not gc.isenabled()
        raise ValueError
    assert gc.isenabled()
    gc.disable()
    try:
        with yamlio.gc_paused():
            pass
        assert not gc.isenabled()  # off before, off after
    finally:
        gc.enable()


def test_walk_visits_collections_once_and_scalars_where_used() -> None:
    (document,) = yamlio.compose_documents("a: &x [1, {b: 2}]\nc: *x\nd: &s t\ne: *s\n", "f")
    scalars = [n.value for n in yamlio.walk(document) if isinstance(n, yaml.ScalarNode)]
    assert scalars == ["a", "1", "b", "2", "c", "d", "t", "e", "t"]
    (loop,) = yamlio.compose_documents("&l [*l, *l]", "f")
    assert list(yamlio.walk(loop)) == [loop]


def test_normalize_is_remembered_but_still_refuses() -> None:
    assert refs.normalize("nginx") is refs.normalize("nginx")
    for _ in range(2):
        with pytest.raises(refs.ReferenceError):
            refs.normalize("Nginx")
    with pytest.raises(refs.ReferenceError, match="must be a string"):
        refs.normalize(["a"])  # type: ignore[arg-type]
