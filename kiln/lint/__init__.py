"""Naming-alignment lint: the rules that decide whether a name is right.

Each rule lives in ``kiln/lint/rules/<id>.py`` with an ``ID``, a default ``LEVEL`` and a
``check(ctx)`` generator of ``Hit``s; levels can be changed per environment.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from kiln import refs
from kiln.errors import ConfigError, Problem
from kiln.lint import argocd
from kiln.lint.charts import ChartRef, scan
from kiln.lint.context import Hit, LintContext
from kiln.lint.conventions import Unresolved, image_refs
from kiln.lint.rules import RULES
from kiln.lint.values import load_release
from kiln.lock import Lock
from kiln.model import Config, Environment, Location

__all__ = ["Finding", "Hit", "LintContext", "format_json", "format_text", "has_errors", "run"]


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    column: int
    level: str
    rule: str
    message: str


def run(config: Config, env: Environment, lock: Lock | None = None) -> list[Finding]:
    """Every finding of every enabled rule for ``env``, sorted by place.

    With a ``lock``, each chart reference is also reported with where a cold node gets it
    (rule ``chart-source``): the node cache, the registry (only once it runs), or nowhere.
    """
    chart_refs, unresolved = release_refs(env)
    plain, applications = scan(env.charts)
    for item in argocd.refs(applications, config.root):
        if isinstance(item, Unresolved):
            unresolved += ((item.at, item.message),)
        else:
            chart_refs += (item,)
    ctx = LintContext(config=config, env=env, images=config.images_for(env),
                      chart_refs=tuple(plain) + chart_refs, unresolved=unresolved, lock=lock)
    findings: set[Finding] = set()
    for rule in RULES:
        level = env.lint.levels.get(rule.ID, rule.LEVEL)
        if level == "off":
            continue
        for hit in rule.check(ctx):
            said, message = _qualified(level, hit)
            findings.add(Finding(hit.at.path, hit.at.line, hit.at.column, said, rule.ID,
                                 message))
    if lock is not None:
        findings.update(chart_sources(ctx, lock))
    return sorted(findings, key=lambda f: (f.file, f.line, f.column, f.rule, f.message))


def _qualified(level: str, hit: Hit) -> tuple[str, str]:
    """A finding about a chart reference says where its values set it; one about an image
    in an argument or variable (the program may not pull it as such), or that its rule marks
    soft, is never more than a warning."""
    message, ref = hit.message, hit.ref
    if ref is not None and ref.origin:
        message += f" (values: {ref.origin})"
    soft = f"in an {ref.indirect}" if ref is not None and ref.indirect else hit.soft
    if soft:
        return ("warning" if level == "error" else level), f"{message} ({soft})"
    return level, message


def release_refs(env: Environment
                 ) -> tuple[tuple[ChartRef, ...], tuple[tuple[Location, str], ...]]:
    """The images of each ``{chart, values}`` entry, from the chart's effective values."""
    found: list[ChartRef] = []
    unresolved: list[tuple[Location, str]] = []
    for release in env.releases:
        if not (release.chart.path / "Chart.yaml").is_file():
            at = release.chart.at
            raise ConfigError([Problem(at.path, at.line, at.column,
                                       f"chart: no Chart.yaml in {release.chart.path}")])
        for entry in release.values:
            if not entry.path.is_file():
                at = entry.at
                raise ConfigError([Problem(at.path, at.line, at.column,
                                           f"values: no such file: {entry.path}")])
        chart = load_release(release.chart.path, [v.path for v in release.values])
        for item in image_refs(chart):
            if isinstance(item, Unresolved):
                unresolved.append((item.at, item.message))
            else:
                found.append(item)
    return tuple(found), tuple(unresolved)


def chart_sources(ctx: LintContext, lock: Lock) -> list[Finding]:
    cached = {image.ref for image in lock.images}
    out = []
    for found in ctx.chart_refs:
        try:
            domain = refs.normalize(found.text).domain
        except refs.ReferenceError:
            continue
        if found.text in cached:
            level, where = "info", "the node cache (side-loaded from day 1)"
        elif domain == ctx.env.registry:
            level, where = "warning", (f"the registry {ctx.env.registry} only: a cold node "
                                       "cannot get it before the registry runs")
        else:
            level, where = "warning", f"nowhere on a cold node ({domain} is outside)"
        out.append(Finding(found.at.path, found.at.line, found.at.column, level,
                           "chart-source", f"{found.text!r} is served from {where}"))
    return out


def has_errors(findings: list[Finding]) -> bool:
    return any(f.level == "error" for f in findings)


def format_text(findings: list[Finding]) -> str:
    return "".join(
        f"{f.file}:{f.line}:{f.column}: [{f.level}] {f.rule} {f.message}\n" for f in findings
    )


def format_json(findings: list[Finding]) -> str:
    return json.dumps([asdict(f) for f in findings], indent=2) + "\n"
