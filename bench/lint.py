#!/usr/bin/env python3
"""Benchmark: `kiln lint` over a ~250,000-line deploy tree (target: under 1 s).

The tree is shaped like a real deploy repository: vendored charts (Chart.yaml, a long
commented values.yaml, Go templates, subcharts under charts/), the users' override files,
and rendered manifests (Deployments, StatefulSets, DaemonSets with init containers, RBAC,
multi-document files, large ConfigMaps with long block scalars). The environment lists the
manifests and one chart as plain paths and the other charts as ``{chart, values}`` entries.
The baseline, measured in the same run, is the same lint with PyYAML's pure-Python loader
(libyaml's C loader disabled).

    make bench-lint            # or: .venv/bin/python bench/lint.py [--lines 250000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kiln import config as config_mod  # noqa: E402
from kiln import lint  # noqa: E402
from kiln.lint.charts import chart_files  # noqa: E402

REG = "registry.example.com"
IMAGES = tuple(f"svc-{i:02d}" for i in range(40))
CHARTS = ("harbor", "keycloak", "loki", "grafana", "vault", "argo", "ingress", "certs")
SUBCHARTS = ("postgresql", "redis", "memcached")
WORDS = ("cluster", "node", "config", "value", "service", "deploy", "label", "volume",
         "secret", "network", "policy", "route", "gateway", "proxy", "metrics", "trace")


def ref(rng: random.Random, name: str) -> str:
    """Mostly the declared ref; now and then a string lint reports (short, retagged, upstream)."""
    roll = rng.random()
    if roll < 0.97:
        return f"{REG}/foundation/{name}:v1.2.3"
    if roll < 0.98:
        return f"{name}:v1.2.3"
    if roll < 0.99:
        return f"{REG}/foundation/{name}:v1.2.4"
    return f"docker.io/upstream/{name}:v1.2.3"


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def container(rng: random.Random, name: str, indent: str) -> str:
    env = "".join(
        f"{indent}      - name: {rng.choice(WORDS).upper()}_{i}\n"
        + (f"{indent}        value: \"{words(rng, 2)}\"\n" if i % 3 else
           f"{indent}        valueFrom:\n{indent}          secretKeyRef: "
           f"{{name: {name}-secret, key: key-{i}}}\n")
        for i in range(rng.randrange(4, 14)))
    return (
        f"{indent}  - name: {name}\n"
        f"{indent}    image: \"{ref(rng, name)}\"\n"
        f"{indent}    imagePullPolicy: IfNotPresent\n"
        f"{indent}    args: [--port=8080, --log-level=info, --{rng.choice(WORDS)}=true]\n"
        f"{indent}    env:\n{env}"
        f"{indent}    ports:\n"
        f"{indent}      - {{name: http, containerPort: 8080, protocol: TCP}}\n"
        f"{indent}      - {{name: metrics, containerPort: 9090, protocol: TCP}}\n"
        f"{indent}    livenessProbe:\n"
        f"{indent}      httpGet: {{path: /healthz, port: http}}\n"
        f"{indent}      initialDelaySeconds: 10\n"
        f"{indent}      periodSeconds: 10\n"
        f"{indent}    readinessProbe:\n"
        f"{indent}      httpGet:\n{indent}        path: /ready\n{indent}        port: http\n"
        f"{indent}    resources:\n"
        f"{indent}      limits: {{cpu: 500m, memory: 512Mi}}\n"
        f"{indent}      requests: {{cpu: 100m, memory: 128Mi}}\n"
        f"{indent}    securityContext:\n"
        f"{indent}      allowPrivilegeEscalation: false\n"
        f"{indent}      readOnlyRootFilesystem: true\n"
        f"{indent}      capabilities: {{drop: [ALL]}}\n"
        f"{indent}    volumeMounts:\n"
        f"{indent}      - name: config\n{indent}        mountPath: /etc/{name}\n"
        f"{indent}      - name: data\n{indent}        mountPath: /var/lib/{name}\n")


def metadata(app: str, name: str) -> str:
    return (f"metadata:\n  name: {name}\n  namespace: {app}\n  labels:\n"
            f"    app.kubernetes.io/name: {app}\n    app.kubernetes.io/instance: {app}\n"
            f"    app.kubernetes.io/managed-by: Helm\n    helm.sh/chart: {app}-1.2.3\n"
            f"  annotations:\n    meta.helm.sh/release-name: {app}\n")


def workload(rng: random.Random, app: str, kind: str, index: int) -> str:
    image = rng.choice(IMAGES)
    init = container(rng, rng.choice(IMAGES), "      ")
    mains = "".join(container(rng, image if i == 0 else rng.choice(IMAGES), "      ")
                    for i in range(rng.randrange(1, 3)))
    extra = ("  serviceName: " + app + "\n" if kind == "StatefulSet" else
             "  updateStrategy: {type: RollingUpdate}\n" if kind == "DaemonSet" else
             "  replicas: 3\n  strategy: {type: RollingUpdate}\n")
    claims = ("  volumeClaimTemplates:\n    - metadata: {name: data}\n      spec:\n"
              "        accessModes: [ReadWriteOnce]\n"
              "        resources: {requests: {storage: 10Gi}}\n" if kind == "StatefulSet"
              else "")
    return (f"---\n# Source: {app}/templates/{kind.lower()}.yaml\napiVersion: apps/v1\n"
            f"kind: {kind}\n" + metadata(app, f"{app}-{index}") + "spec:\n" + extra
            + f"  selector:\n    matchLabels: {{app.kubernetes.io/name: {app}}}\n"
            f"  template:\n    metadata:\n      labels:\n        app.kubernetes.io/name: {app}\n"
            f"      annotations:\n        checksum/config: {rng.getrandbits(128):032x}\n"
            f"    spec:\n      serviceAccountName: {app}\n"
            f"      securityContext: {{runAsNonRoot: true, runAsUser: 1000, fsGroup: 1000}}\n"
            f"      tolerations:\n        - {{key: node-role, operator: Exists, "
            f"effect: NoSchedule}}\n"
            f"      initContainers:\n{init}      containers:\n{mains}"
            f"      volumes:\n        - name: config\n          configMap: {{name: {app}}}\n"
            f"        - name: data\n          emptyDir: {{}}\n" + claims)


def config_map(rng: random.Random, app: str, lines: int) -> str:
    body = "".join(f"    {rng.choice(WORDS)}.{i}: {words(rng, rng.randrange(2, 9))}\n"
                   for i in range(lines // 2))
    dashboard = "".join(f'      {{"id": {i}, "title": "{words(rng, 3)}", "type": "graph"}},\n'
                        for i in range(lines // 2))
    return ("---\napiVersion: v1\nkind: ConfigMap\n" + metadata(app, f"{app}-config")
            + f"data:\n  {app}.conf: |\n{body}  dashboard.json: |-\n    [\n{dashboard}    ]\n")


def rbac(app: str) -> str:
    return ("---\napiVersion: v1\nkind: ServiceAccount\n" + metadata(app, app)
            + "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n"
            + metadata(app, app) + "rules:\n"
            + "".join(f"  - apiGroups: ['']\n    resources: [{r}]\n"
                      f"    verbs: [get, list, watch]\n" for r in ("pods", "configmaps",
                                                                     "secrets", "services"))
            + "---\napiVersion: v1\nkind: Service\n" + metadata(app, app)
            + f"spec:\n  selector: {{app.kubernetes.io/name: {app}}}\n  ports:\n"
            + "    - {name: http, port: 80, targetPort: http}\n")


def manifest(rng: random.Random, app: str) -> str:
    """One rendered release: a multi-document file of a few hundred lines."""
    docs = [rbac(app), config_map(rng, app, rng.randrange(40, 300))]
    for i in range(rng.randrange(2, 6)):
        docs.append(workload(rng, app, rng.choice(("Deployment", "StatefulSet", "DaemonSet")), i))
    return "".join(docs)


def component(rng: random.Random, name: str, image: str, shape: int) -> str:
    """A component of a vendored chart's values.yaml, commented as upstream charts are."""
    maps = (f"    registry: docker.io\n    repository: upstream/{image}\n    tag: v1.2.3\n",
            f"    image: upstream/{image}\n    tag: v1.2.3\n",
            f"    name: {image}\n    tag: v1.2.3\n")
    comments = "".join(f"## {words(rng, rng.randrange(4, 12))}\n"
                       for _ in range(rng.randrange(2, 8)))
    return (f"## @section {name} parameters\n{comments}{name}:\n"
            f"  ## @param {name}.image {words(rng, 5)}\n  image:\n{maps[shape]}"
            f"    pullPolicy: IfNotPresent\n    pullSecrets: []\n"
            f"  ## Number of replicas\n  replicaCount: 1\n"
            f"  resources:\n    limits: {{}}\n    requests: {{cpu: 100m, memory: 128Mi}}\n"
            f"  podAnnotations: {{}}\n  nodeSelector: {{}}\n  tolerations: []\n"
            f"  affinity: {{}}\n  extraEnvVars: []\n  extraVolumes: []\n"
            f"  extraContainers:\n    - name: sidecar\n"
            f"      image: docker.io/upstream/{rng.choice(IMAGES)}:v1.2.3\n"
            f"  service:\n    type: ClusterIP\n    ports:\n      http: 80\n      metrics: 9090\n"
            f"  config: |\n" + "".join(f"    {rng.choice(WORDS)}_{i} = {words(rng, 3)}\n"
                                       for i in range(rng.randrange(5, 30)))
            + "  metrics:\n    enabled: false\n    serviceMonitor:\n      enabled: false\n"
            "      interval: 30s\n      labels: {}\n")


def chart(folder: Path, rng: random.Random, name: str, shape: int, components: int,
          globals_: str) -> dict[str, str]:
    """Write a vendored chart below ``folder``; the image of each of its components."""
    (folder / "templates").mkdir(parents=True)
    (folder / "Chart.yaml").write_text(f"apiVersion: v2\nname: {name}\nversion: 1.2.3\n"
                                       "appVersion: v1.2.3\ntype: application\n")
    (folder / "templates/deployment.yaml").write_text(
        "image: {{ .Values.image.repository }}:{{ .Values.image.tag }}\n{{- if .Values.x }}\n")
    images = {f"c{i}": rng.choice(IMAGES) for i in range(components)}
    (folder / "values.yaml").write_text(globals_ + "".join(
        component(rng, key, image, shape) for key, image in images.items()))
    return images


def override(images: dict[str, str], shape: int, scope: str = "") -> str:
    """A user's override: the internal registry for most components, one left upstream."""
    pad = "  " if scope else ""
    lines = [f"{scope}:\n"] if scope else []
    for key, image in list(images.items())[1:]:
        lines.append(f"{pad}{key}:\n{pad}  image:\n")
        lines.append((f"{pad}    registry: {REG}\n{pad}    repository: foundation/{image}\n",
                      f"{pad}    registry: {REG}\n{pad}    image: foundation/{image}\n",
                      f"{pad}    imageRegistry: {REG}\n{pad}    imageNamespace: foundation\n")
                     [shape])
        lines.append(f"{pad}  replicaCount: 2\n{pad}  resources:\n"
                     f"{pad}    limits: {{cpu: '1', memory: 1Gi}}\n")
    return "".join(lines)


def vendored(root: Path, rng: random.Random) -> list[str]:
    """The vendored charts and their overrides; the `charts:` entries naming them."""
    entries = []
    for i, name in enumerate(CHARTS):
        shape = (0, 0, 0, 0, 0, 0, 1, 2)[i]
        globals_ = ("global:\n  imageRegistry: ''\n" if shape == 0 else
                    "global:\n  image:\n    registry: ''\n" if shape == 1 else
                    "global:\n  imageRegistry: quay.io\n  imageNamespace: upstream\n")
        folder = root / "vendor" / name
        images = chart(folder, rng, name, shape, 25, globals_)
        texts = [override(images, shape)]
        for sub in SUBCHARTS[: i % 3 + 1]:
            subimages = chart(folder / "charts" / sub, rng, sub, 0, 10,
                              "global:\n  imageRegistry: ''\n")
            texts.append(override(subimages, 0, sub))
        (root / "values" / "prod").mkdir(parents=True, exist_ok=True)
        (root / "values" / f"{name}.yaml").write_text(texts[0])
        (root / "values" / "prod" / f"{name}.yaml").write_text("".join(texts[1:]) or "{}\n")
        if name == "certs":
            entries.append("deploy/vendor/certs")  # an old habit: a chart as a plain path
        else:
            entries.append(f"{{chart: deploy/vendor/{name}, values: [deploy/values/{name}.yaml,"
                           f" deploy/values/prod/{name}.yaml]}}")
    return entries


def deploy_tree(root: Path, lines: int) -> int:
    """Write ``root``/deploy and ``root``/images.yaml; the lines of the files lint reads."""
    rng = random.Random(12)
    entries = vendored(root / "deploy", rng)
    entries.insert(0, "deploy/manifests")
    count = sum(p.read_text().count("\n") for p in (root / "deploy").rglob("*.yaml")
                if "templates" not in p.parts)
    app = 0
    while count < lines:
        text = manifest(rng, f"app-{app:03d}")
        path = root / "deploy/manifests" / f"app-{app:03d}" / "rendered.yaml"
        path.parent.mkdir(parents=True)
        path.write_text(text)
        count += text.count("\n")
        app += 1
    images = "".join(f"  - name: {name}\n    ref: {REG}/foundation/{name}:v1.2.3\n"
                     f"    pull: docker.io/upstream/{name}:v1.2.3@sha256:{'a' * 64}\n"
                     for name in IMAGES)
    (root / "images.yaml").write_text(
        f"version: 1\nimages:\n{images}environments:\n  prod:\n    registry: {REG}\n"
        "    store: {type: dir, path: store}\n    charts:\n"
        + "".join(f"      - {entry}\n" for entry in entries))
    return count


def timed(run: Callable[[], list[lint.Finding]]) -> tuple[float, list[lint.Finding]]:
    start = time.perf_counter()
    findings = run()
    return time.perf_counter() - start, findings


def paired(rounds: int, run: Callable[[], list[lint.Finding]]) -> tuple[float, float]:
    """Best seconds of ``run`` with libyaml, and with the pure-Python loader.

    In rounds, so that load from elsewhere on the machine hits both alike: each round runs
    the C lint three times (it takes a second) and the baseline once.
    """
    fast, pure = [], []
    for _ in range(rounds):
        for _ in range(3):
            seconds, found = timed(run)
            fast.append(seconds)
        with mock.patch.object(yaml, "CSafeLoader", yaml.SafeLoader):
            seconds, found_pure = timed(run)
        pure.append(seconds)
        if found != found_pure:
            raise SystemExit("bench: the C and pure-Python loaders disagree on the findings")
    return min(fast), min(pure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=250_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not hasattr(yaml, "CSafeLoader"):
        raise SystemExit("bench: this PyYAML has no libyaml (yaml.CSafeLoader): nothing to compare")
    work = Path(tempfile.mkdtemp(prefix="bench-lint-"))
    here = Path.cwd()
    try:
        lines = deploy_tree(work, args.lines)
        os.chdir(work)  # findings name files relative to the working folder, as in a repo
        cfg = config_mod.load(Path("images.yaml"), "images.yaml")
        env = cfg.environment("prod")
        files = len(list(chart_files(env.charts)))
        findings = len(lint.run(cfg, env))
        fast, pure = paired(args.rounds, lambda: lint.run(cfg, env))
    finally:
        os.chdir(here)
        shutil.rmtree(work, ignore_errors=True)
    print(f"deploy tree: {lines:,} lines; {files} files in plain paths, "
          f"{len(env.releases)} charts with overrides; {findings} findings")
    print(f"{'measurement':<52}{'seconds':>9}")
    print(f"{f'kiln lint, libyaml C loader (best of {3 * args.rounds})':<52}{fast:>9.3f}")
    print(f"{f'baseline: pure-Python loader (best of {args.rounds})':<52}{pure:>9.3f}")
    print(f"{'  ratio C / pure':<52}{fast / pure:>9.2f}")
    print(f"{'  target: under 1 s':<52}{'met' if fast < 1 else 'MISSED':>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
