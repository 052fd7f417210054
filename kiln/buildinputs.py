"""The inputs of a `build:` image, as one digest: a rebake with unchanged inputs builds nothing.

The engine's classic builder does not make image IDs reproducible: each step's image carries a
`created` time, and its cache picks the newest of several matching intermediate images, so
two images built from one context (or a context built again with `--no-cache`, or a fresh
engine) come out under new IDs although nothing changed. kiln therefore keys a build on what
goes into it and records that key in the lock (`inputs`); while it is unchanged, the locked
image is kept (see kiln/bake.py).

What counts as an input (``digest``):
- every file, folder and symlink of the context the Docker client sends: the context's
  `.dockerignore` applied exactly as docker-py applies it (moby's patterns, `**`, `!`
  exceptions; docker-py matches case-insensitively; the Dockerfile and `.dockerignore` are
  always sent); per entry its path, type and permission bits (mode & 0o7777), a file's
  size and sha256 (read in chunks: a huge context costs I/O, not memory), a symlink's target
  (not followed, as docker-py sends it). Modification times, owners and the context's own
  path are not inputs: the engine's build cache ignores them too;
- the Dockerfile's path and bytes, the build args, the target and the platform;
- each external image the Dockerfile names (`FROM`, `COPY --from=`): a digest-pinned
  reference as written, any other by the image ID the engine has under it.

No digest (None: build as before) when an input cannot be pinned: an external image the
engine does not have, a `FROM` whose variables do not resolve, or an `ADD` of a URL (its
bytes are not in the context). A `RUN` that downloads something is, as for the engine's own
cache, not an input: change a build arg to rebuild.

Core module: no Docker import; the engine is reached through the ``image_id`` callback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from kiln.model import BuildSource

VERSION = "kiln-build-inputs-1"
CHUNK = 1 << 20


# -- .dockerignore, as docker-py applies it (docker/utils/build.py, fnmatch.py) ----------------


def _translate(pattern: str) -> str:
    """A .dockerignore pattern as a regular expression (docker-py's fnmatch.translate)."""
    i, n, res = 0, len(pattern), ""
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                res += ".*" if i >= n else "(.*/)?"
            else:
                res += "[^/]*"
        elif c == "?":
            res += "[^/]"
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                res += "\\["
            else:
                stuff = pattern[i:j].replace("\\", "\\\\")
                i = j + 1
                if stuff[0] == "!":
                    stuff = "^" + stuff[1:]
                elif stuff[0] == "^":
                    stuff = "\\" + stuff
                res += f"[{stuff}]"
        else:
            res += re.escape(c)
    return res


def _split(path: str) -> list[str]:
    return [part for part in path.split("/") if part and part != "."]


class _Pattern:
    def __init__(self, text: str) -> None:
        self.exclusion = text.startswith("!")
        parts = _split((text[1:] if self.exclusion else text).strip())
        i = 0
        while i < len(parts):  # ".." removes itself and the part before it
            if parts[i] == "..":
                del parts[i]
                if i > 0:
                    del parts[i - 1]
                    i -= 1
            else:
                i += 1
        self.dirs = parts
        self.cleaned = "/".join(parts)
        try:
            self.regex: re.Pattern[str] | None = re.compile(_translate(self.cleaned.lower()))
        except re.error:
            self.regex = None  # docker-py would fail the build; match nothing here

    def match(self, path: str) -> bool:
        return self.regex is not None and self.regex.fullmatch(path.lower()) is not None


class Ignore:
    """The patterns of a context's .dockerignore (plus the ones docker-py always adds)."""

    def __init__(self, lines: list[str], dockerfile: str = "Dockerfile") -> None:
        kept = [line.strip() for line in lines]
        kept = [line for line in kept if line and not line.startswith("#")]
        self.patterns = [p for p in (_Pattern(t) for t in [*kept, "!" + dockerfile]) if p.dirs]
        self.patterns.append(_Pattern("!.dockerignore"))

    @classmethod
    def of(cls, context: Path, dockerfile: str = "Dockerfile") -> Ignore:
        try:
            text = (context / ".dockerignore").read_text(errors="surrogateescape")
        except FileNotFoundError:
            text = ""
        return cls(text.splitlines(), dockerfile)

    def excluded(self, path: str) -> bool:
        matched = False
        parent = _split(posix_dirname(path))
        for pattern in self.patterns:
            match = pattern.match(path)
            if not match and parent and len(pattern.dirs) <= len(parent):
                match = pattern.match("/".join(parent[:len(pattern.dirs)]))
            if match:
                matched = not pattern.exclusion
        return matched

    def keeps_inside(self, folder: str) -> bool:
        """An excluded folder is still walked when an exception pattern starts with it."""
        return any(p.exclusion and p.cleaned.startswith(folder) for p in self.patterns)


def posix_dirname(path: str) -> str:
    return path.rpartition("/")[0]


def context_paths(context: Path, ignore: Ignore) -> Iterator[str]:
    """The context's paths (files, folders, links) the Docker client sends, relative."""
    def walk(folder: str) -> Iterator[str]:
        for name in os.listdir(context / folder if folder else context):
            path = f"{folder}/{name}" if folder else name
            excluded = ignore.excluded(path)
            if not excluded:
                yield path
            full = context / path
            if full.is_symlink() or not full.is_dir():
                continue
            if excluded and not ignore.keeps_inside(path):
                continue
            yield from walk(path)

    return walk("")


# -- the Dockerfile's external images --------------------------------------------------------


class Unpinned(Exception):
    """An input that the digest cannot pin: build as usual."""


_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<op>[-+])(?P<word>[^}]*))?\}"
                  r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def _expand(word: str, values: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        value = values.get(name)
        if match.group("op") == "-":
            return value if value else match.group("word")
        if match.group("op") == "+":
            return match.group("word") if value else ""
        if value is None:
            raise Unpinned(f"${name} is not set")
        return value

    expanded = _VAR.sub(one, word)
    if "$" in expanded:
        raise Unpinned(f"cannot expand {word!r}")
    return expanded


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) per logical line: continuations joined, comments dropped."""
    escape = "\\"
    lines = text.splitlines()
    for line in lines:  # parser directives: only at the very top
        found = re.fullmatch(r"\s*#\s*(\w+)\s*=\s*(\S+)\s*", line)
        if not found:
            break
        if found.group(1).lower() == "escape" and found.group(2) in ("\\", "`"):
            escape = found.group(2)
    result: list[tuple[str, str]] = []
    current = ""
    for line in lines:
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        stripped = line.rstrip()
        if stripped.endswith(escape):
            current += stripped[:-1] + " "
            continue
        current += line
        word, _, rest = current.strip().partition(" ")
        result.append((word.upper(), rest.strip()))
        current = ""
    if current.strip():
        word, _, rest = current.strip().partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def external_images(dockerfile: str, args: dict[str, str]) -> list[str]:
    """The images a Dockerfile takes from outside: FROM bases and COPY --from= sources."""
    global_args: dict[str, str] = {}
    stages: set[str] = set()
    found: list[str] = []
    seen_from = False
    for word, rest in instructions(dockerfile):
        tokens = rest.split()
        if word == "ARG" and not seen_from:
            for token in tokens:
                name, eq, default = token.partition("=")
                if name in args:
                    global_args[name] = args[name]
                elif eq:
                    global_args[name] = _expand(default.strip("\"'"), global_args)
        elif word == "FROM":
            seen_from = True
            words = [t for t in tokens if not t.startswith("--")]
            if not words:
                raise Unpinned("a FROM without an image")
            base = _expand(words[0], global_args)
            if base.lower() != "scratch" and base.lower() not in stages:
                found.append(base)
            if len(words) >= 3 and words[1].lower() == "as":
                stages.add(words[2].lower())
            stages.add(str(len(stages)))  # a stage is also named by its number
        elif word in ("COPY", "ADD"):
            for token in tokens:
                if token.startswith("--from="):
                    source = token.removeprefix("--from=")
                    if source.lower() not in stages and not source.isdigit():
                        found.append(source)
                elif word == "ADD" and re.match(r"(?i)^(https?|git)://|^git@", token):
                    raise Unpinned(f"ADD of a URL ({token})")
        elif word == "ONBUILD":
            raise Unpinned("ONBUILD")
    return found


# -- the digest ------------------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _entry(context: Path, path: str) -> list[object]:
    full = context / path
    info = full.lstat()
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode):
        return [path, "link", mode, os.readlink(full)]
    if stat.S_ISDIR(info.st_mode):
        return [path, "dir", mode]
    if stat.S_ISREG(info.st_mode):
        return [path, "file", mode, info.st_size, _file_sha256(full)]
    if stat.S_ISSOCK(info.st_mode):
        return [path, "socket"]  # docker-py leaves sockets out; named so a change shows
    return [path, "special", stat.S_IFMT(info.st_mode), mode]


def digest(source: BuildSource, platform: str,
           image_id: Callable[[str], str | None]) -> str | None:
    """``sha256:<hex>`` of the build's inputs (module doc), or None when one is unpinned.

    ``image_id`` gives the engine's image ID for a reference, None when it has none.
    """
    context = source.context
    try:
        dockerfile = (context / source.dockerfile).read_bytes()
        bases: list[list[str]] = []
        for ref in external_images(dockerfile.decode("utf-8", "surrogateescape"),
                                   dict(source.args)):
            pinned = ref if "@sha256:" in ref else image_id(ref)
            if pinned is None:
                return None
            bases.append([ref, pinned])
        out = hashlib.sha256()

        def put(value: object) -> None:
            out.update(json.dumps(value, separators=(",", ":")).encode("utf-8",
                                                                       "surrogateescape"))
            out.update(b"\n")

        put([VERSION, platform, source.dockerfile, source.target or "",
             sorted(source.args.items()), hashlib.sha256(dockerfile).hexdigest(), bases])
        ignore = Ignore.of(context, source.dockerfile)
        for path in sorted(context_paths(context, ignore)):
            put(_entry(context, path))
    except Unpinned:
        return None
    except OSError:
        return None  # an unreadable context: the build reports it
    return "sha256:" + out.hexdigest()
