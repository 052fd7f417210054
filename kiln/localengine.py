"""A private containerd and dockerd under one folder: for tests, `make bake ENV=dev` and demos.

Nothing here touches the machine's defaults: roots, state, sockets, pid files and the daemon
config all live below the folder given, and the daemons are stopped by the PID recorded there.

    python -m kiln.localengine start .run      # prints DOCKER_HOST=... and CONTAINERD_ADDRESS=...
    python -m kiln.localengine stop .run
    python -m kiln.localengine run .run -- CMD...   # CMD against DOCKER_HOST if it answers,
                                                     # else against a private engine started
                                                     # for it and stopped afterwards
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError

CONTAINERD_CONFIG = """\
version = 2
root = "{base}/containerd/root"
state = "{base}/containerd/state"
[grpc]
  address = "{base}/containerd.sock"
[ttrpc]
  address = "{base}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


@dataclass(frozen=True)
class Daemon:
    name: str
    pid: int
    socket: Path
    log: Path

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, wait, then SIGKILL: by PID, never by name."""
        _signal(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(self.pid):
                return
            time.sleep(0.1)
        _signal(self.pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child: fall back to kill(0)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def missing_tools() -> list[str]:
    return [tool for tool in ("containerd", "dockerd", "ctr") if shutil.which(tool) is None]


def _start(name: str, argv: list[str], base: Path, sock: Path, timeout: float) -> Daemon:
    """Spawn a daemon in its own session, record its PID, wait for its socket."""
    log = base / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    (base / f"{name}.pid").write_text(f"{proc.pid}\n")
    daemon = Daemon(name, proc.pid, sock, log)
    try:
        _wait_for_socket(sock, proc.pid, log, name, timeout)
    except BaseException:
        daemon.stop()
        raise
    return daemon


def _wait_for_socket(path: Path, pid: int, log: Path, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            tail = log.read_text(errors="replace").splitlines()[-5:]
            raise KilnError(f"{name} exited at start: " + " | ".join(tail))
        if path.exists():
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(path))
                    return
                except OSError:
                    pass
        time.sleep(0.1)
    raise KilnError(f"{name} did not open {path} within {timeout:.0f}s (log: {log})")


def start_containerd(base: Path, timeout: float = 30.0) -> Daemon:
    base.mkdir(parents=True, exist_ok=True)
    base = base.resolve()
    config = base / "containerd.toml"
    config.write_text(CONTAINERD_CONFIG.format(base=base))
    return _start("containerd", ["containerd", "--config", str(config)], base,
                  base / "containerd.sock", timeout)


def start_dockerd(base: Path, containerd: Daemon, timeout: float = 60.0) -> Daemon:
    base.mkdir(parents=True, exist_ok=True)
    base = base.resolve()
    config = base / "daemon.json"
    config.write_text("{}\n")
    sock = base / "docker.sock"
    argv = [
        "dockerd", "--config-file", str(config), "--containerd", str(containerd.socket),
        "--data-root", str(base / "docker"), "--exec-root", str(base / "docker-exec"),
        "--pidfile", str(base / "docker-daemon.pid"), "--host", f"unix://{sock}",
        "--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-masq=false",
    ]
    return _start("dockerd", argv, base, sock, timeout)


def stop_all(base: Path) -> None:
    """Stop the daemons whose PIDs are recorded under ``base`` (dockerd first)."""
    for name in ("dockerd", "containerd"):
        pidfile = base / f"{name}.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().strip() or 0)
            if pid > 0:
                Daemon(name, pid, base, base).stop()
            pidfile.unlink()


def engine_answers(host: str | None) -> bool:
    """True when a Docker engine answers at ``host`` (or the SDK's default)."""
    import docker
    import docker.errors
    import requests.exceptions

    try:
        client = docker.DockerClient(base_url=host, timeout=5) if host else docker.from_env(
            timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return False


def run_with_engine(base: Path, command: list[str]) -> int:
    """Run ``command`` with a Docker engine: DOCKER_HOST's, or a private one started for it."""
    if engine_answers(os.environ.get("DOCKER_HOST")):
        return subprocess.call(command)
    where = os.environ.get("DOCKER_HOST") or "the default socket"
    sys.stderr.write(f"kiln: no Docker engine answers at {where}; starting a private one "
                     f"under {base}/engine\n")
    code = start_engine(base)
    if code != 0:
        return code
    engine = (base / "engine").resolve()
    env = {**os.environ, "DOCKER_HOST": f"unix://{engine / 'docker.sock'}",
           "CONTAINERD_ADDRESS": str(engine / "containerd.sock")}
    try:
        return subprocess.call(command, env=env)
    finally:
        stop_all(base / "engine")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("start", "stop", "run"):
        sys.stderr.write("usage: python -m kiln.localengine start|stop FOLDER\n"
                         "       python -m kiln.localengine run FOLDER -- COMMAND...\n")
        return 2
    base = Path(argv[1])
    if argv[0] == "stop":
        stop_all(base / "engine")
        return 0
    if argv[0] == "run":
        command = argv[3:] if argv[2:3] == ["--"] else argv[2:]
        return run_with_engine(base, command)
    code = start_engine(base)
    if code == 0:
        engine = (base / "engine").resolve()
        print(f"DOCKER_HOST=unix://{engine / 'docker.sock'}")
        print(f"CONTAINERD_ADDRESS={engine / 'containerd.sock'}")
    return code


def start_engine(base: Path) -> int:
    """Start containerd and dockerd under ``base/engine``; 0, or 1 with the reason printed."""
    missing = missing_tools()
    if missing:
        sys.stderr.write(f"kiln: error: no Docker engine answers and {', '.join(missing)} "
                         "is not installed: apt-get install docker.io containerd, or set "
                         "DOCKER_HOST to a running engine\n")
        return 1
    try:
        containerd = start_containerd(base / "engine")
        start_dockerd(base / "engine", containerd)
    except KilnError as exc:
        stop_all(base / "engine")
        sys.stderr.write(f"kiln: error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
