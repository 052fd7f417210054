"""Packages are found automatically; templates/ (top level, the product's layout) ships inside
the wheel as kiln/templates. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["kiln", "kiln.*"]), "kiln.templates"],
    package_dir={"kiln.templates": "templates"},
    package_data={"kiln.templates": ["*.sh", "*.j2"]},
)
