"""What every lint rule receives, and what it yields."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.lint.charts import ChartRef
from kiln.lock import Lock
from kiln.model import Config, Environment, Image, Location


@dataclass(frozen=True)
class LintContext:
    config: Config
    env: Environment
    images: tuple[Image, ...]  # refs resolved for env
    chart_refs: tuple[ChartRef, ...]
    unresolved: tuple[tuple[Location, str], ...] = ()  # (where, why): images lint cannot see
    lock: Lock | None = None  # given to `lint --lock`: digests pinned by charts are checked


@dataclass(frozen=True)
class Hit:
    at: Location
    message: str
    ref: ChartRef | None = None  # the chart reference it is about, if any
    soft: str = ""  # why it is at most a warning (lint cannot be sure), if it is
