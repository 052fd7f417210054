"""What every lint rule receives, and what it yields."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.config import Config, Environment, Image, Location
from kiln.lint.charts import ChartRef


@dataclass(frozen=True)
class LintContext:
    config: Config
    env: Environment
    images: tuple[Image, ...]  # refs resolved for env
    chart_refs: tuple[ChartRef, ...]


@dataclass(frozen=True)
class Hit:
    at: Location
    message: str
