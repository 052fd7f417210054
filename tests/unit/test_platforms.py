"""kiln/platforms.py: the node's platform, the entries it imports, and how diff names them."""

from __future__ import annotations

from dataclasses import dataclass

from kiln import platforms


@dataclass(frozen=True)
class E:
    name: str
    platform: str


def test_machines_map_to_platforms() -> None:
    assert platforms.of_machine("x86_64") == "linux/amd64"
    assert platforms.of_machine("aarch64") == platforms.of_machine("arm64") == "linux/arm64"
    assert platforms.of_machine("armv7l") == "linux/arm/v7"
    assert platforms.of_machine("mips") is None


def test_a_variantless_entry_serves_each_variant() -> None:
    assert platforms.serves("linux/arm", "linux/arm/v7")
    assert not platforms.serves("linux/arm/v6", "linux/arm/v7")
    assert not platforms.serves("linux/arm", "linux/arm64")


def test_names_get_their_platform_when_an_image_has_several() -> None:
    old = [E("a", "linux/amd64"), E("b", "linux/amd64")]
    new = [E("a", "linux/amd64"), E("a", "linux/arm64"), E("b", "linux/amd64")]
    multi = platforms.several(old, new)
    assert [platforms.label(e, multi) for e in new] == [
        "a (linux/amd64)", "a (linux/arm64)", "b"]
