"""A throwaway single-node Ceph with radosgw under one folder: a real S3 server for the
integration tests, the benchmarks, and for trying kiln's S3 path on one machine (`make store`).

One ceph-mon, one ceph-mgr, one OSD whose object store is memstore (the objects live in the
OSD's memory: stopping drops them) and radosgw (beast) on 127.0.0.1. The daemons trust each
other (auth none, loopback only); S3 requests are checked for real: signatures, presigned
expiry, users and bucket policies. Two S3 users: a writer (bake, diff, presigning) and a
reader that may only GET the objects of buckets made by ``create_bucket`` (the nodes).
Nothing touches /etc/ceph or /var/lib/ceph: every daemon and tool is given FOLDER/ceph.conf,
which keeps data, sockets, logs and PIDs below FOLDER; daemons are stopped by the PID recorded
there, and only while that PID still runs with this folder's ceph.conf.

    python -m kiln.cephdev start FOLDER [--port 7480] [--bucket kiln]   # prints the block
    python -m kiln.cephdev env FOLDER [--bucket kiln]    # prints it again (keys from radosgw)
    python -m kiln.cephdev stop FOLDER
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import KilnError

TOOLS = ("monmaptool", "ceph-mon", "ceph", "ceph-osd", "ceph-mgr", "radosgw", "radosgw-admin")
PACKAGES = "ceph-mon ceph-mgr ceph-osd radosgw"
DAEMONS = ("rgw", "mgr", "osd", "mon")  # the order they are stopped in
REGION = "default"  # radosgw's zonegroup; it ignores the region, but SigV4 signs one
WRITER, READER = "kiln", "kiln-nodes"

CONF = """\
[global]
fsid = {fsid}
mon host = v2:{mon_addr}
public addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
# loopback only: the daemons trust each other; S3 requests are still signed and checked
auth cluster required = none
auth service required = none
auth client required = none
# radosgw asks the monitor for a 'secure' connection alone, which auth none cannot give
ms mon client mode = crc secure
run dir = {base}/run
admin socket = {base}/run/$name.asok
pid file = {base}/run/$name.pid
log file = {base}/log/$name.log
crash dir = {base}/crash
keyring = {base}/keyring
mon data = {base}/mon/$cluster-$id
osd data = {base}/osd/$cluster-$id
mgr data = {base}/mgr/$cluster-$id
rgw data = {base}/rgw
mon allow pool size one = true
mon max pg per osd = 1000
mon data avail warn = 1
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = {memory}
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}{tls}
"""
# ceph.conf expands $ and reads # and ; as comments: a folder path takes none of them
SAFE_PATH = re.compile(r"[A-Za-z0-9_./+-]+")


@dataclass(frozen=True)
class Keys:
    user: str
    access_key: str
    secret_key: str


@dataclass(frozen=True)
class Cluster:
    base: Path
    endpoint: str
    writer: Keys  # creates buckets, writes and deletes objects
    reader: Keys  # GET only, on buckets made by create_bucket (what nodes need)
    region: str = REGION
    tls_endpoint: str | None = None  # the same radosgw over HTTPS (start(tls=True))
    ca_bundle: Path | None = None  # its self-signed certificate, for clients to trust

    def client(self, keys: Keys | None = None) -> Any:
        """A boto3 S3 client for the writer, or for ``keys``."""
        import boto3
        import botocore.config

        keys = keys or self.writer
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=keys.access_key, aws_secret_access_key=keys.secret_key,
            config=botocore.config.Config(s3={"addressing_style": "path"},
                                          signature_version="s3v4"))

    def create_bucket(self, name: str) -> None:
        """A bucket of the writer's that the reader may GET objects from."""
        client = self.client()
        client.create_bucket(Bucket=name)
        client.put_bucket_policy(Bucket=name, Policy=reader_policy(name, self.reader.user))

    def stop(self) -> None:
        stop(self.base)


def reader_policy(bucket: str, reader: str) -> str:
    """A bucket policy letting ``reader`` GET objects, and nothing else."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "nodes-read", "Effect": "Allow",
        "Principal": {"AWS": [f"arn:aws:iam:::user/{reader}"]},
        "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::{bucket}/*"]}]})


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


# -- processes ------------------------------------------------------------------------------------


def _conf(base: Path) -> Path:
    return base / "ceph.conf"


def _ours(pid: int, base: Path) -> bool:
    """Does ``pid`` still run a daemon of this folder (not a PID reused since)?"""
    try:
        # our own child: its PID cannot be reused before we reap it
        return os.waitpid(pid, os.WNOHANG)[0] != pid
    except ChildProcessError:
        pass  # another process's child (a `start` that has exited): ask /proc
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(_conf(base)).encode() in argv


def _recorded(base: Path) -> dict[str, int]:
    """The daemons of this folder that still run: name -> PID."""
    found = {}
    for name in DAEMONS:
        with contextlib.suppress(OSError, ValueError):
            pid = int((base / "pids" / f"{name}.pid").read_text())
            if pid > 0 and _ours(pid, base):
                found[name] = pid
    return found


def pids(base: Path) -> dict[str, int]:
    """The daemons of the cluster under ``base`` that still run: name -> PID."""
    return _recorded(base.resolve())


def _spawn(base: Path, name: str, *argv: str) -> int:
    """Start one daemon in the foreground of its own session; record its PID."""
    with (base / "log" / f"{name}.out").open("ab") as out:
        proc = subprocess.Popen([argv[0], "-c", str(_conf(base)), "-f", *argv[1:]],
                                stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    (base / "pids" / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def _tool(base: Path, *argv: str, timeout: float = 60) -> str:
    """Run one Ceph tool against this folder's cluster; its stdout, or KilnError."""
    try:
        done = subprocess.run([argv[0], "-c", str(_conf(base)), *argv[1:]], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise KilnError(f"{' '.join(argv[:3])} did not answer within {timeout:.0f}s "
                        f"(logs: {base}/log)") from None
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise KilnError(f"{' '.join(argv[:3])} failed ({done.returncode}): {tail}")
    return done.stdout


def _log_tail(base: Path, name: str) -> str:
    logs = sorted((base / "log").glob(f"*{name}*"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return "no log"
    lines = logs[-1].read_text(errors="replace").strip().splitlines()[-3:]
    return f"{logs[-1]}: " + " | ".join(lines)


def stop(base: Path, remove: bool = True, timeout: float = 10.0) -> None:
    """Stop this folder's daemons by their recorded PIDs, then (``remove``) delete it all.
    One after the other, radosgw first: a daemon whose cluster is gone hangs on its way out."""
    base = base.resolve()
    for name, pid in _recorded(base).items():  # in DAEMONS order
        # memstore writes every object to disk on a clean stop: for nothing, it is thrown away
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL if name == "osd" else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _ours(pid, base) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            if _ours(pid, base):
                os.kill(pid, signal.SIGKILL)
    if remove:
        shutil.rmtree(base, ignore_errors=True)


# -- start ----------------------------------------------------------------------------------------


def start(base: Path, *, port: int = 0, memory: int = 4 << 30, tls: bool = False,
          timeout: float = 120.0) -> Cluster:
    """Start a fresh cluster under ``base`` (wiped first); radosgw on ``port`` (0: any free),
    and with ``tls`` on another port too, over HTTPS with a self-signed certificate."""
    base = base.resolve()
    if not SAFE_PATH.fullmatch(str(base)):
        raise KilnError(f"{base}: a dev store folder takes letters, digits and _./+- only")
    missing = missing_tools() + (["openssl"] if tls and not shutil.which("openssl") else [])
    if missing:
        raise KilnError(f"{', '.join(missing)} not installed: apt-get install {PACKAGES} "
                        "(or sh .ci/install-packages store)")
    if _recorded(base):
        raise KilnError(f"a dev store already runs under {base}: stop it first")
    if port and port_taken(port):
        raise KilnError(f"port {port} on 127.0.0.1 is taken: pick another one")
    shutil.rmtree(base, ignore_errors=True)
    for sub in ("run", "log", "pids", "mon", "osd", "mgr/ceph-x", "rgw", "crash"):
        (base / sub).mkdir(parents=True)
    rgw_port, mon_addr, fsid = port or free_port(), f"127.0.0.1:{free_port()}", str(uuid.uuid4())
    tls_port = free_port() if tls else 0
    frontend = (f" ssl_endpoint=127.0.0.1:{tls_port} ssl_certificate={_certificate(base)}"
                if tls else "")
    _conf(base).write_text(CONF.format(fsid=fsid, mon_addr=mon_addr, base=base, memory=memory,
                                       rgw_port=rgw_port, tls=frontend))
    try:
        _start_daemons(base, fsid, mon_addr)
        endpoint = f"http://127.0.0.1:{rgw_port}"
        _wait_for_s3(base, endpoint, timeout)
        writer = _create_user(base, WRITER)
        reader = _create_user(base, READER, "--max-buckets", "-1")  # may create no bucket
    except BaseException:
        stop(base, remove=False)  # the logs stay for a look
        raise
    return Cluster(base, endpoint, writer, reader,
                   tls_endpoint=f"https://127.0.0.1:{tls_port}" if tls else None,
                   ca_bundle=base / "tls" / "cert.pem" if tls else None)


def _certificate(base: Path) -> Path:
    """A self-signed certificate for 127.0.0.1; beast reads it with its key from one file."""
    folder = base / "tls"
    folder.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
                   capture_output=True, check=True, stdin=subprocess.DEVNULL)
    both = folder / "rgw.pem"
    both.touch(mode=0o600)
    both.write_bytes((folder / "cert.pem").read_bytes() + (folder / "key.pem").read_bytes())
    return both


def _start_daemons(base: Path, fsid: str, mon_addr: str) -> None:
    _tool(base, "monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:{mon_addr}]",
          str(base / "monmap"))
    _tool(base, "ceph-mon", "--mkfs", "-i", "a", "--monmap", str(base / "monmap"))
    _spawn(base, "mon", "ceph-mon", "-i", "a")
    osd_uuid = str(uuid.uuid4())
    osd_id = _tool(base, "ceph", "--connect-timeout", "60", "osd", "create", osd_uuid).strip()
    if not osd_id.isdigit():
        raise KilnError(f"ceph osd create answered {osd_id!r}, not an OSD id")
    (base / "osd" / f"ceph-{osd_id}").mkdir()
    _tool(base, "ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
    _spawn(base, "osd", "ceph-osd", "-i", osd_id)
    _spawn(base, "mgr", "ceph-mgr", "-i", "x")
    _spawn(base, "rgw", "radosgw", "-n", "client.rgw")


def _wait_for_s3(base: Path, endpoint: str, timeout: float) -> None:
    """Until radosgw answers HTTP (it does once its pools exist: the OSD is up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            pass
        ended = [n for n in DAEMONS if n not in _recorded(base)]
        if ended:
            raise KilnError(f"ceph {ended[0]} ended at start: {_log_tail(base, ended[0])}")
        if time.monotonic() > deadline:
            raise KilnError(f"radosgw did not answer at {endpoint} within {timeout:.0f}s: "
                            f"{_log_tail(base, 'rgw')}")
        time.sleep(0.2)


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _create_user(base: Path, uid: str, *extra: str) -> Keys:
    access = _random(string.ascii_uppercase + string.digits, 20)
    secret = _random(string.ascii_letters + string.digits, 40)
    _tool(base, "radosgw-admin", "user", "create", "--uid", uid, "--display-name", uid,
          "--access-key", access, "--secret", secret, *extra)
    return Keys(uid, access, secret)


# -- what runs, and the block to paste ------------------------------------------------------------


def running(base: Path) -> Cluster | None:
    """The cluster running under ``base`` (its keys asked from radosgw), or None."""
    base = base.resolve()
    if set(_recorded(base)) != set(DAEMONS):
        return None
    port = re.search(r"endpoint=127\.0\.0\.1:(\d+)", _conf(base).read_text())
    if port is None:
        return None

    def keys(uid: str) -> Keys:
        info = json.loads(_tool(base, "radosgw-admin", "user", "info", "--uid", uid))
        first = info["keys"][0]
        return Keys(uid, first["access_key"], first["secret_key"])

    return Cluster(base, f"http://127.0.0.1:{port.group(1)}", keys(WRITER), keys(READER))


def env_block(cluster: Cluster, bucket: str, name: str = "ceph") -> str:
    """What to paste into images.yaml, and the variables to export (never written to a file)."""
    return (
        f"# paste under `environments:` in images.yaml (radosgw at {cluster.endpoint}):\n"
        f"  {name}:\n"
        "    registry: registry.example.com\n"
        f"    store: {{type: s3, endpoint: '{cluster.endpoint}', bucket: {bucket}, "
        f"region: {cluster.region}, addressing: path, prefix: kiln/, url_mode: presigned, "
        "ttl: 24h}\n"
        "# bake, diff and render (presigned) with the writer's keys:\n"
        f"export AWS_ACCESS_KEY_ID={cluster.writer.access_key}\n"
        f"export AWS_SECRET_ACCESS_KEY={cluster.writer.secret_key}\n"
        f"# the nodes' read-only keys (GET on s3://{bucket}/* only), for url_mode sigv4:\n"
        f"#   AWS_ACCESS_KEY_ID={cluster.reader.access_key} "
        f"AWS_SECRET_ACCESS_KEY={cluster.reader.secret_key} "
        f"python bake.py render --env {name}\n"
    )


def _first_bucket(cluster: Cluster, name: str) -> None:
    try:
        cluster.create_bucket(name)
    except Exception as exc:  # boto3's errors: a bad name, a server that went away
        stop(cluster.base, remove=False)
        raise KilnError(f"cannot create the bucket {name!r} ({exc}); the store is stopped, "
                        f"its logs are under {cluster.base}/log") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln.cephdev", description=__doc__.split(
        "\n", 1)[0])
    parser.add_argument("action", choices=("start", "env", "stop"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--port", type=int, default=7480, help="radosgw's port (start)")
    parser.add_argument("--bucket", default="kiln", help="the bucket to make (start) or name")
    args = parser.parse_args(argv)
    try:
        if args.action == "stop":
            stop(args.folder)
            return 0
        cluster = running(args.folder)
        if cluster is None and args.action == "env":
            raise KilnError(f"no dev store runs under {args.folder}: start it first")
        if cluster is None:
            began = time.monotonic()
            cluster = start(args.folder, port=args.port)
            _first_bucket(cluster, args.bucket)
            sys.stderr.write(f"kiln: Ceph started in {time.monotonic() - began:.1f}s under "
                             f"{args.folder} (objects in memory: stopping drops them)\n")
    except KilnError as exc:
        sys.stderr.write(f"kiln: error: {exc}\n")
        return 1
    sys.stdout.write(env_block(cluster, args.bucket))
    return 0


if __name__ == "__main__":
    sys.exit(main())
