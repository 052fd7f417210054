"""Every lint rule, triggered at a known file:line:col; the shipped example is clean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln import config, lint
from kiln.cli import main
from kiln.lint.rules import RULE_IDS
from kiln.lint.rules.mutable_tag import mutable_reason
from tests.helpers import write_tree

D = "sha256:" + "c" * 64

TREE = {
    "images.yaml": f"""
        version: 1
        images:
          - name: registry
            ref: registry.example.com/foundation/registry:v0.4.2
            build: ctx
          - name: short
            ref: foundation/short:v1
            build: ctx
          - name: moving
            ref: registry.example.com/foundation/moving:latest
            build: ctx
          - name: elsewhere
            ref: ghcr.io/other/elsewhere:v1
            pull: ghcr.io/other/elsewhere:v1
          - name: registry
            ref: registry.example.com/foundation/registry:v0.4.2
            pull: docker.io/library/registry:2@{D}
            verify: none
            recompress: true
        environments:
          dev:
            registry: registry.example.com
            store: {{type: dir, path: store}}
            charts: [charts, manifest.yaml, {{chart: rel}}]
            lint: {{levels: {{unpinned-upstream: error}}}}
        """,
    "charts/app/Chart.yaml": "name: app\n",
    "charts/app/templates/broken.yaml": "image: {{ .Values.image }}\n",
    "charts/app/values.yaml": """
        undeclared:
          image:
            registry: registry.example.com
            repository: foundation/unknown
            tag: v1
        other_tag:
          image: {repository: registry.example.com/foundation/registry, tag: v0.4.3}
        templated:
          image: "{{ .Values.global.image }}"
        upstream:
          image: quay.io/somebody/else:v1
        broken:
          image: registry.example.com//foundation/x:v1
        """,
    "rel/Chart.yaml": "name: rel\n",
    "rel/values.yaml": "image:\n  repository: \"\"\n"
                       f"up:\n  image: docker.io/library/registry:2@{D}\n",
    "manifest.yaml": """
        apiVersion: v1
        kind: Pod
        spec:
          containers:
            - name: a
              image: registry.example.com/foundation/registry:v0.4.2
              imagePullPolicy: Always
        ---
        apiVersion: v1
        kind: Pod
        spec:
          initContainers:
            - name: b
              image: registry:v0.4.2
        """,
}

EXPECTED = [
    ("charts/app/values.yaml", 3, 5, "error", "chart-undeclared"),
    ("charts/app/values.yaml", 7, 10, "error", "chart-mismatch"),
    ("charts/app/values.yaml", 11, 10, "error", "chart-unreachable"),
    ("charts/app/values.yaml", 13, 10, "error", "chart-invalid-ref"),
    ("images.yaml", 7, 10, "error", "not-fully-qualified"),
    ("images.yaml", 7, 10, "error", "registry-mismatch"),
    ("images.yaml", 10, 10, "error", "mutable-tag"),
    ("images.yaml", 13, 10, "error", "registry-mismatch"),
    ("images.yaml", 14, 5, "error", "unpinned-upstream"),
    ("images.yaml", 14, 5, "warning", "unverified-pull"),
    ("images.yaml", 15, 11, "error", "duplicate-name"),
    ("images.yaml", 16, 10, "error", "duplicate-ref"),
    ("images.yaml", 18, 13, "warning", "unverified-pull"),
    ("images.yaml", 19, 5, "warning", "recompressed-upstream"),
    ("manifest.yaml", 7, 24, "error", "pull-policy-always"),
    ("manifest.yaml", 14, 14, "error", "chart-mismatch"),
    ("rel/values.yaml", 2, 3, "warning", "image-unresolved"),
    ("rel/values.yaml", 4, 10, "error", "chart-upstream"),
]


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_tree(tmp_path, TREE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_rule_fires_at_its_place(tree: Path) -> None:
    cfg = config.load(Path("images.yaml"), "images.yaml")
    findings = lint.run(cfg, cfg.environment("dev"))
    assert [(f.file, f.line, f.column, f.level, f.rule) for f in findings] == EXPECTED
    # chart-digest-mismatch needs a lock: tests/unit/test_lint_digests.py
    assert {rule for *_, rule in EXPECTED} == set(RULE_IDS) - {"chart-digest-mismatch"}


def test_messages_say_what_to_write(tree: Path) -> None:
    cfg = config.load(Path("images.yaml"), "images.yaml")
    by_place = {(f.file, f.line, f.rule): f.message for f in lint.run(cfg, cfg.environment("dev"))}
    assert "'docker.io/foundation/short:v1'" in by_place[("images.yaml", 7, "not-fully-qualified")]
    assert "should be 'registry.example.com/foundation/registry:v0.4.2'" in by_place[
        ("manifest.yaml", 14, "chart-mismatch")]
    assert "a cold node would have to pull it" in by_place[
        ("charts/app/values.yaml", 3, "chart-undeclared")]


def test_levels_are_configurable(tree: Path) -> None:
    text = (tree / "images.yaml").read_text().replace(
        "{unpinned-upstream: error}", "{unpinned-upstream: warning, mutable-tag: off}")
    (tree / "images.yaml").write_text(text)
    cfg = config.load(Path("images.yaml"), "images.yaml")
    findings = lint.run(cfg, cfg.environment("dev"))
    assert [f.level for f in findings if f.rule == "unpinned-upstream"] == ["warning"]
    assert not [f for f in findings if f.rule == "mutable-tag"]


def test_unknown_rule_in_levels_is_a_config_error(tree: Path, capsys: pytest.CaptureFixture[str]
                                                  ) -> None:
    text = (tree / "images.yaml").read_text().replace("unpinned-upstream: error",
                                                      "unpined-upstream: error")
    (tree / "images.yaml").write_text(text)
    assert main(["lint", "--env", "dev"]) == 2
    assert "did you mean 'unpinned-upstream'?" in capsys.readouterr().err


def test_cli_text_and_json(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", "--env", "dev"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[4].startswith("images.yaml:7:10: [error] not-fully-qualified 'foundation/")
    assert len(lines) == len(EXPECTED)
    assert main(["lint", "--env", "dev", "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert set(data[0]) == {"file", "line", "column", "level", "rule", "message"}
    assert [(d["file"], d["line"], d["column"], d["level"], d["rule"]) for d in data] == EXPECTED


def test_warnings_only_exit_zero(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    levels = ", ".join(f"{r}: warning" for r in RULE_IDS)
    text = (tree / "images.yaml").read_text().replace("{unpinned-upstream: error}",
                                                      "{" + levels + "}")
    (tree / "images.yaml").write_text(text)
    assert main(["lint", "--env", "dev"]) == 0
    assert "[warning]" in capsys.readouterr().out


def test_chart_syntax_error_points_at_the_file(tree: Path, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    (tree / "manifest.yaml").write_text("a: [\n")
    assert main(["lint", "--env", "dev"]) == 2
    assert capsys.readouterr().err.startswith("manifest.yaml:2:1: YAML syntax error")


def test_missing_chart_path(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "manifest.yaml").unlink()
    assert main(["lint", "--env", "dev"]) == 2
    assert "images.yaml:24:22: charts: no such file or folder" in capsys.readouterr().err


def test_internal_error_exit_3_with_log(tree: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(lint, "run", boom)
    monkeypatch.setenv("KILN_CRASH_LOG", str(tree / "crash.log"))
    assert main(["lint", "--env", "dev"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kaboom" in err
    assert "Traceback" in (tree / "crash.log").read_text()


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["lint", "--format", "xml"])
    assert info.value.code == 2


def test_mutable_reason() -> None:
    tags = ("latest", "main")
    assert mutable_reason("reg.example.com/a", tags) is not None
    assert mutable_reason("reg.example.com/a:Latest", tags) is not None
    assert mutable_reason("reg.example.com/a:main", tags) is not None
    assert mutable_reason(f"reg.example.com/a@{D}", tags) is None  # a digest alone is fine
    assert mutable_reason("reg.example.com/a:v1", tags) is None


def test_shipped_example_is_clean(monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(Path(__file__).parents[2])
    for env in ("dev", "prod"):
        assert main(["lint", "--env", env]) == 0
        assert capsys.readouterr().out == ""


def test_lint_with_a_lock_says_where_each_chart_image_comes_from(
        tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kiln import lock as lockfile
    from kiln.lock import Lock, LockedImage

    image = LockedImage("registry", "registry.example.com/foundation/registry:v0.4.2",
                        "sha256:" + "1" * 64, "linux/amd64", "2" * 64, 1, 1, "zstd", 1,
                        "blobs/sha256/" + "2" * 64, (), "build",
                        manifest_digests=(("linux/amd64", "sha256:" + "3" * 64),))
    lockfile.write(tree / "l.json", Lock("dev", "registry.example.com", images=(image,)))
    main(["lint", "--env", "dev", "--lock", "l.json", "--format", "json"])
    sources = {(f["file"], f["line"]): (f["level"], f["message"])
               for f in json.loads(capsys.readouterr().out) if f["rule"] == "chart-source"}
    assert sources[("manifest.yaml", 6)][0] == "info"
    assert "node cache" in sources[("manifest.yaml", 6)][1]
    assert "registry registry.example.com only" in sources[("charts/app/values.yaml", 3)][1]
    assert "nowhere on a cold node (quay.io" in sources[("charts/app/values.yaml", 11)][1]
    assert main(["lint", "--env", "dev", "--lock", "missing.json"]) == 1
