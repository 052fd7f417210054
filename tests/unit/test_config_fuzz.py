"""For any YAML document the loader returns a Config or a ConfigError with line and column."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln import config
from kiln.errors import ConfigError

KEYS = ["version", "images", "environments", "name", "ref", "build", "pull", "archive",
        "platform", "roles", "registry", "store", "type", "path", "url", "bucket", "node",
        "parallel", "charts", "compression", "lint", "levels", "context", "args", "ttl",
        "dev", "prod", "<<", "level", "algorithm", "bundles", "mutable_tags", "url_mode"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=False),
    st.sampled_from(["dir", "s3", "zstd", "1", "registry.example.com",
                     "registry.example.com/a/b:v1", "${registry}/x:1", "nginx", "24h", "8d",
                     "linux/amd64", "http://127.0.0.1:8080/", "error", "off"]),
    st.text(max_size=20),
)
DOCS = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children,
                        max_size=6),
    ),
    max_leaves=40,
)
FOLDER = tempfile.TemporaryDirectory(prefix="kiln-fuzz-")


def assert_loads_or_locates(data: bytes) -> None:
    path = Path(FOLDER.name) / "images.yaml"
    path.write_bytes(data)
    try:
        result = config.load(path, "images.yaml")
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.path == "images.yaml"
            assert problem.line >= 1 and problem.column >= 1
            assert problem.message
    else:
        assert isinstance(result, config.Config)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCS)
def test_structured_documents(document: object) -> None:
    assert_loads_or_locates(yaml.safe_dump(document, allow_unicode=True).encode())


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:- \n\t[]{}&*!|>'\"#%@`,?\\0.\x00\x85é")),
               max_size=80))
def test_arbitrary_text(text: str) -> None:
    assert_loads_or_locates(text.encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60))
def test_arbitrary_bytes(data: bytes) -> None:
    assert_loads_or_locates(data)


def test_billion_laughs_and_recursion_are_bounded() -> None:
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)},"
        f" *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
    assert_loads_or_locates(laughs.encode())
    assert_loads_or_locates(b"version: &v [*v]\n")
    assert_loads_or_locates(b"[" * 5000)
