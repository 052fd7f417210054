"""The package as users install it: a wheel, into a fresh virtualenv outside the checkout.

Builds the wheel with pip (build isolation: setuptools from the package index), installs it
with its dependencies into a new virtualenv under a temp folder, and runs the `kiln` console
script there on a copy of the dev example: lint, then render from a lock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHA = "c" * 64


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv outside the checkout with the built wheel installed; its bin folder."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    # build from a copy of the tracked files: nothing of the checkout's state leaks in
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    wheels = work / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                    str(source)], check=True, timeout=600)
    [wheel] = wheels.glob("kiln-*.whl")
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    subprocess.run([str(env_dir / "bin/python"), "-m", "pip", "install", "-q", str(wheel)],
                   check=True, timeout=900)
    return env_dir / "bin"


def kiln(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    return subprocess.run([str(bin_dir / "kiln"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_wheel_carries_every_package_and_the_templates(installed: Path) -> None:
    probe = ("import kiln, kiln.stores, kiln.stores.s3, kiln.commands, kiln.lint.rules, "
             "kiln.render as r; print(kiln.__file__); print(r.TEMPLATES)")
    out = subprocess.run([str(installed / "python"), "-c", probe], cwd="/", check=True,
                         capture_output=True, text=True).stdout.split()
    assert not out[0].startswith(str(ROOT)), "imported the checkout, not the wheel"
    templates = Path(out[1])
    assert templates.parent == Path(out[0]).parent
    assert (templates / "import-images.sh").read_bytes() == \
        (ROOT / "templates/import-images.sh").read_bytes()


def test_kiln_lint_and_render_run_from_the_wheel(installed: Path,
                                                 tmp_path: Path) -> None:
    for name in ("images.yaml", "images", "deploy", "packer"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name)
        else:
            shutil.copy2(source, tmp_path / name)
    result = kiln(installed, "lint", "--env", "dev", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = kiln(installed, "render", "--env", "dev", cwd=tmp_path)
    assert result.returncode == 1 and "no lock for dev" in result.stderr, result.stderr
    lock = {"version": 4, "environment": "dev", "registry": "registry.example.com",
            "images": [{"name": "dex", "ref": "registry.example.com/foundation/dex:v2.41.1",
                        "image_id": "sha256:" + "d" * 64, "platform": "linux/amd64",
                        "sha256": SHA, "size": 10, "uncompressed_size": 20,
                        "compression": "zstd", "compression_level": 1,
                        "key": f"blobs/sha256/{SHA}", "roles": [], "source": "build",
                        "upstream": None,
                        "manifest_digests": {"linux/amd64": "sha256:" + "e" * 64},
                        "index_digest": None}],
            "store": {}}
    (tmp_path / "dist/dev").mkdir(parents=True)
    (tmp_path / "dist/dev/images.lock.json").write_text(json.dumps(lock))
    (tmp_path / "nodes.yaml").write_text("nodes:\n  - {hostname: w-1, roles: [worker]}\n")
    result = kiln(installed, "render", "--env", "dev", "--inventory", "nodes.yaml",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    importer = tmp_path / "dist/dev/node/import-images"
    assert importer.read_bytes() == (ROOT / "templates/import-images.sh").read_bytes()
    data = (tmp_path / "dist/dev/node/images.data").read_text()
    assert f"http://127.0.0.1:8080/blobs/sha256/{SHA}" in data
    assert f"registry.example.com/foundation/dex@sha256:{'e' * 64}" in data
    assert (tmp_path / "dist/dev/nodes/w-1/meta-data").exists()
