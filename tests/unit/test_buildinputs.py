"""The digest of a build's inputs (kiln/buildinputs.py): what changes it and what does not."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from docker.utils.build import exclude_paths
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.buildinputs import Ignore, context_paths, digest, external_images
from kiln.config import BuildSource

FILES = {"Dockerfile": "FROM scratch\nCOPY . /\n", "a.txt": "a", "sub/b.txt": "b",
         "sub/deep/c.bin": "c" * 5000}


def make(folder: Path, files: dict[str, str] | None = None, reverse: bool = False) -> Path:
    items = sorted((files or FILES).items(), reverse=reverse)
    for name, text in items:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def key(context: Path, platform: str = "linux/amd64", bases: dict[str, str] | None = None,
        **fields: object) -> str | None:
    source = BuildSource(context=context, **fields)  # type: ignore[arg-type]
    return digest(source, platform, (bases or {}).get)


def test_equal_trees_give_equal_digests_wherever_and_in_whatever_order_they_were_made(
        tmp_path: Path) -> None:
    one = make(tmp_path / "one")
    two = make(tmp_path / "elsewhere" / "two", reverse=True)
    assert key(one) == key(two) is not None
    assert key(one) == key(one)  # and again: deterministic
    os.utime(two / "a.txt", (1, 1))  # times are no input (the engine's cache ignores them)
    assert key(one) == key(two)


@pytest.mark.parametrize("change", [
    "content", "mode", "new file", "removed file", "renamed", "dockerfile", "empty folder",
])
def test_a_changed_context_changes_the_digest(tmp_path: Path, change: str) -> None:
    context = make(tmp_path / "ctx")
    before = key(context)
    if change == "content":
        (context / "sub/deep/c.bin").write_text("c" * 4999 + "d")
    elif change == "mode":
        (context / "a.txt").chmod(0o755)
    elif change == "new file":
        (context / "sub/new").write_text("")
    elif change == "removed file":
        (context / "sub/b.txt").unlink()
    elif change == "renamed":
        (context / "sub/b.txt").rename(context / "sub/B.txt")
    elif change == "dockerfile":
        (context / "Dockerfile").write_text("FROM scratch\nCOPY . /app\n")
    else:
        (context / "empty").mkdir()
    assert key(context) != before


def test_args_target_platform_and_dockerfile_path_are_inputs(tmp_path: Path) -> None:
    context = make(tmp_path / "ctx")
    (context / "Other.Dockerfile").write_text(FILES["Dockerfile"])
    base = key(context, args={"V": "1"})
    assert base is not None
    others = [key(context, args={"V": "2"}), key(context, args={"V": "1", "W": "1"}),
              key(context), key(context, args={"V": "1"}, target="runtime"),
              key(context, "linux/arm64", args={"V": "1"}),
              key(context, args={"V": "1"}, dockerfile="Other.Dockerfile")]
    assert len({base, *others}) == 1 + len(others)
    # arg order is no input
    assert key(context, args={"A": "1", "B": "2"}) == key(context, args={"B": "2", "A": "1"})


def test_a_symlink_is_hashed_as_a_link_not_followed(tmp_path: Path) -> None:
    context = make(tmp_path / "ctx")
    outside = tmp_path / "outside.txt"
    outside.write_text("one")
    (context / "link").symlink_to(outside)
    before = key(context)
    outside.write_text("two")  # docker-py sends the link, not what it points at
    assert key(context) == before
    (context / "link").unlink()
    (context / "link").symlink_to("a.txt")
    assert key(context) != before


def test_dockerignore_leaves_out_what_the_client_does_not_send(tmp_path: Path) -> None:
    context = make(tmp_path / "ctx", {**FILES, ".dockerignore": "*.txt\n!sub/b.txt\n**/*.bin\n"
                                                                 "# a comment\n"})
    before = key(context)
    (context / "a.txt").write_text("ignored")
    (context / "sub/deep/c.bin").write_text("ignored too")
    assert key(context) == before
    (context / "sub/b.txt").write_text("re-included by !sub/b.txt")
    assert key(context) != before
    # the Dockerfile and .dockerignore are always sent, so they count even when ignored
    after = key(context)
    (context / ".dockerignore").write_text("*.txt\n!sub/b.txt\n**/*.bin\nDockerfile\n")
    assert key(context) != after


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.sets(st.lists(st.sampled_from(["a", "b", "A", "x.txt", ".hidden", "d"]),
                              min_size=1, max_size=3).map("/".join), max_size=8),
       patterns=st.lists(st.sampled_from(
           ["a", "*.txt", "!x.txt", "**/b", "!a/b", "a/*", "d", "!d/x.txt", "/a/", "?",
            "[ab]", "**", "!**/A", "a/../b", ".hidden", "*/x.txt", "b/**"]), max_size=4))
def test_the_context_is_the_set_docker_py_sends(tmp_path: Path, files: set[str],
                                                patterns: list[str]) -> None:
    context = tmp_path / "ctx"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir()
    for name in sorted(files):
        path = context / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(name)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            continue  # a name that is a file in one entry and a folder in another
    (context / "Dockerfile").write_text("FROM scratch\n")
    mine = set(context_paths(context, Ignore(list(patterns))))
    assert mine == exclude_paths(str(context), list(patterns), "Dockerfile")


def test_external_images_are_inputs_by_their_engine_image_id(tmp_path: Path) -> None:
    context = make(tmp_path / "ctx", {
        "Dockerfile": "ARG BASE=debian:12\nFROM ${BASE} AS build\nFROM scratch\n"
                      "COPY --from=build /x /x\nCOPY --from=tools:1 /t /t\n"
                      "COPY --from=0 /y /y\n"})
    ids = {"debian:12": "sha256:" + "1" * 64, "tools:1": "sha256:" + "2" * 64}
    before = key(context, bases=ids)
    assert before is not None
    assert key(context, bases={**ids, "tools:1": "sha256:" + "3" * 64}) != before
    # a base the engine does not have cannot be pinned: build as usual
    assert key(context, bases={"tools:1": ids["tools:1"]}) is None
    # a build arg picks another base
    assert key(context, bases={**ids, "debian:13": ids["debian:12"]},
               args={"BASE": "debian:13"}) not in (None, before)


def test_external_image_grammar() -> None:
    assert external_images("FROM scratch\nCOPY a /\n", {}) == []
    assert external_images("# escape=`\nFROM --platform=linux/amd64 `\n  alpine:3 as b\n"
                           "FROM b\nCOPY --from=B /x /\n", {}) == ["alpine:3"]
    assert external_images("FROM r.example/x@sha256:" + "a" * 64 + "\n", {}) == [
        "r.example/x@sha256:" + "a" * 64]


@pytest.mark.parametrize("dockerfile", [
    "FROM scratch\nADD https://example.com/x.tgz /x\n",  # bytes from outside the context
    "ARG TAG\nFROM alpine:$TAG\n",  # unset: the engine would fail or guess
    "FROM scratch\nONBUILD COPY . /\n",
])
def test_what_cannot_be_pinned_gives_no_digest(tmp_path: Path, dockerfile: str) -> None:
    context = make(tmp_path / "ctx", {"Dockerfile": dockerfile})
    assert key(context, bases={"alpine:": "sha256:" + "1" * 64}) is None


def test_a_digest_pinned_base_needs_no_engine(tmp_path: Path) -> None:
    pinned = "r.example/base@sha256:" + "a" * 64
    context = make(tmp_path / "ctx", {"Dockerfile": f"FROM {pinned}\n"})
    assert key(context) is not None  # no engine lookup at all


def test_an_unreadable_context_gives_no_digest(tmp_path: Path) -> None:
    assert key(tmp_path / "missing") is None
