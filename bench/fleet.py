#!/usr/bin/env python3
"""Benchmark: a rack boots at once. N nodes run kiln's real importer against one store through
a fault-injecting proxy, each node in its own network namespace on a shaped link.

This is a network and store simulation: all but ``--real-containerd`` nodes import into a
stand-in for `ctr` that reads and checks every archive but unpacks nothing
(bench/fleetnode.py). Per N it prints the time until the last node is ready against the
floor (the bytes every node needs, over the store's shaped egress rate), requests and retries
per node and peak concurrent connections (the proxy's log), the nodes that recovered after
the outage, and the unverified imports (archives handed to ctr whose sha256 is not the
lock's: must be 0). Needs root (namespaces, veths, tc, iptables); leaves nothing behind.

    make bench-fleet         # or: .venv/bin/python bench/fleet.py [--nodes 10,50,200]
                             #     [--sizes 12,6,3,1] [--store-rate 100mbit] [--no-faults] ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import fleetnet, fleetnode, fleetreport  # noqa: E402
from bench.fleetstore import Backend, backend  # noqa: E402
from kiln import localengine  # noqa: E402

TOOLS = ("ip", "tc", "iptables-restore", "curl", "ctr", "containerd", "openssl")
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's
PROXY_PORT = 8080
UNITS = {"k": 10**3, "m": 10**6, "g": 10**9}


def rate(text: str) -> int:
    """Bits per second from '1gbit', '500mbit', '200kbit' or a number."""
    value = text.lower().removesuffix("bit").removesuffix("bps")
    scale = UNITS.get(value[-1:], 1)
    return int(float(value.rstrip("kmg")) * scale)


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", default="10,50,200", help="fleet sizes, one run each")
    p.add_argument("--sizes", default="12,6,3,1", help="MB of each image (every node gets all)")
    p.add_argument("--store-rate", type=rate, default=rate("100mbit"), help="store egress")
    p.add_argument("--link-rate", type=rate, default=rate("1gbit"), help="each node's link")
    p.add_argument("--link-delay", type=float, default=1.0, help="one-way ms (see fleetproxy)")
    p.add_argument("--link-loss", type=float, default=0.01, help="percent of packets, each way")
    p.add_argument("--slowdown", type=float, default=0.05, help="share of 503 SlowDown answers")
    p.add_argument("--retry-after", type=int, default=2, help="their Retry-After, seconds")
    p.add_argument("--reset", type=float, default=0.02, help="share cut by a TCP reset")
    p.add_argument("--stall", type=float, default=0.01, help="share that stall mid-body")
    p.add_argument("--stall-seconds", type=float, default=20.0)
    p.add_argument("--corrupt", type=float, default=0.0, help="share with one byte flipped")
    p.add_argument("--outage", type=float, default=60.0, help="seconds of full outage (0: none)")
    p.add_argument("--outage-at", type=float, default=0.3, help="its start, a share of the floor")
    p.add_argument("--no-faults", action="store_true", help="no 503, reset, stall or outage")
    p.add_argument("--node", action="append", default=[], metavar="KEY=VALUE",
                   help="a node: setting of the environment (retries=8, retry_max_delay=300, ...)")
    p.add_argument("--real-containerd", type=int, default=2, help="nodes with a real containerd")
    p.add_argument("--store", default="radosgw", choices=("dir", "radosgw"),
                   help="store backend: a real radosgw, or a folder over HTTP "
                        "(bench/fleetstore.py)")
    p.add_argument("--store-url", help="objects already served here (the url backend)")
    p.add_argument("--deadline", type=float, help="seconds a fleet may take (default: ample)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--work", type=Path, help="keep the run's files here")
    args = p.parse_args(argv)
    if args.no_faults:
        args.slowdown = args.reset = args.stall = args.corrupt = args.outage = 0.0
    return args


def preflight(store: str) -> str | None:
    """Why this machine cannot run the bench, or None."""
    if os.geteuid() != 0:
        return ("bench-fleet needs root: it makes network namespaces, veth pairs, tc qdiscs "
                "and iptables rules (all removed at the end). Run it as root.")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if store == "radosgw":
        from kiln import cephdev

        missing += cephdev.missing_tools()
    if missing:
        return (f"missing {', '.join(missing)}: apt-get install iproute2 iptables curl containerd"
                + (" ceph-mon ceph-mgr ceph-osd radosgw" if store == "radosgw" else ""))
    return None


@dataclass
class Setup:
    work: Path
    args: argparse.Namespace
    net: fleetnet.Fleet
    origin: str  # the store's base URL in the machine's namespace
    node_dir: Path  # the rendered importer and its data file
    unit: Path
    stand_in: Path
    shim: Path
    restart: int
    node_bytes: int
    images: int
    store_pid: int | None = None


@dataclass
class Running:
    """One fleet's processes; ``stop()`` ends whatever still runs, by PID."""

    nodes: dict[int, int] = field(default_factory=dict)  # pid -> node index
    proxy: subprocess.Popen[str] | None = None
    containerds: list[localengine.Daemon] = field(default_factory=list)

    def stop(self, work: Path) -> None:
        for pid in list(self.nodes):
            try:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.nodes.clear()
        if self.proxy and self.proxy.poll() is None:
            self.proxy.kill()
            self.proxy.wait()
        for i, daemon in enumerate(self.containerds):
            daemon.stop()
            subprocess.run(["umount", "-R", "-l", str(work / f"ctd-{i}")],
                           capture_output=True, check=False)
            shutil.rmtree(work / f"ctd-{i}", ignore_errors=True)
        self.containerds.clear()


def start_proxy(s: Setup, n: int, t0: float, floor: float, log: Path) -> subprocess.Popen[str]:
    a = s.args
    faults = {"slowdown": a.slowdown, "retry_after": a.retry_after, "reset": a.reset,
              "stall": a.stall, "stall_seconds": a.stall_seconds, "corrupt": a.corrupt,
              "seed": a.seed + n,
              "outage_start": t0 + a.outage_at * floor, "outage_seconds": a.outage,
              "delay": 4 * a.link_delay / 1000}  # a connect and a request: two round trips
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bench/fleetproxy.py"), "--netns", s.net.store,
         "--listen", f"{fleetnet.STORE_IP}:{PROXY_PORT}", "--upstream", s.origin,
         "--log", str(log), "--faults", json.dumps(faults)],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    if not proc.stdout.readline().startswith("listening"):
        raise SystemExit("bench: the proxy did not start")
    return proc


def launch(s: Setup, n: int, run: Running) -> None:
    """Power the rack on: every node's unit starts at once."""
    for i in range(n):
        real = i < len(run.containerds)
        files = fleetnode.node_files(
            s.work, i, s.shim if real else s.stand_in, s.node_dir, NODE_PATH,
            str(run.containerds[i].socket) if real else None)
        files.env["FLEET_PYTHON"] = sys.executable
        proc = subprocess.Popen(
            s.net.exec(s.net.node(i), ["sh", str(s.unit), str(files.folder), str(s.restart)]),
            env=files.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        run.nodes[proc.pid] = i


def wait_all(run: Running, deadline: float) -> float:
    """Reap the nodes until all are done or the deadline passes; their CPU seconds."""
    cpu = 0.0
    while run.nodes and time.time() < deadline:
        for pid in list(run.nodes):
            done, _, usage = os.wait4(pid, os.WNOHANG)
            if done == pid:
                cpu += usage.ru_utime + usage.ru_stime
                del run.nodes[pid]
        time.sleep(0.2)
    return cpu


def one_fleet(s: Setup, n: int) -> fleetreport.Result:
    a = s.args
    floor = max(n * s.node_bytes * 8 / a.store_rate, s.node_bytes * 8 / a.link_rate)
    deadline_s = a.deadline or 3 * (floor + a.outage) + 180
    run = Running()
    log = s.work / f"proxy-{n}.json"
    try:
        run.containerds = [localengine.start_containerd(s.work / f"ctd-{i}")
                           for i in range(min(a.real_containerd, n))]
        t0 = time.time() + 1.0
        run.proxy = start_proxy(s, n, t0, floor, log)
        cpu = fleetreport.Cpu.now([run.proxy.pid, s.store_pid])
        tcp = fleetnet.tcp_counters(s.net.store)
        time.sleep(max(0.0, t0 - time.time()))
        launch(s, n, run)
        print(f"bench: {n} nodes booted; floor {floor:.1f}s", flush=True)
        node_cpu = wait_all(run, t0 + deadline_s)
        cpu = cpu.since([run.proxy.pid, s.store_pid], node_cpu)
        after = fleetnet.tcp_counters(s.net.store)
        tcp = {k: after.get(k, 0) - v for k, v in tcp.items()}
        run.proxy.send_signal(signal.SIGTERM)
        run.proxy.wait(60)
        real = [fleetreport.check_containerd(d) for d in run.containerds]
    finally:
        run.stop(s.work)
    proxy_log = json.loads(log.read_text())
    outcomes = [fleetnode.outcome(s.work / "nodes" / f"n{i}") for i in range(n)]
    return fleetreport.result(n, t0, floor, a, s.node_bytes, s.images, proxy_log, outcomes,
                              real, cpu, tcp)


def prepare(work: Path, args: argparse.Namespace, net: fleetnet.Fleet, store: Backend) -> Setup:
    sizes = [float(x) for x in args.sizes.split(",")]
    node = dict(item.split("=", 1) for item in args.node)
    env, lock = fleetnode.make_store(work, sizes, args.seed, node)
    origin = store.start(work / "store", work / "store.log")
    path = origin.split("/", 3)[3] if origin.count("/") >= 3 else ""
    node_dir = fleetnode.render_for(env, lock, work,
                                    f"http://{fleetnet.STORE_IP}:{PROXY_PORT}/{path}")
    unit, stand_in, shim = fleetnode.prepare(work, node_dir, lock)
    return Setup(work, args, net, origin, node_dir, unit, stand_in, shim,
                 fleetnode.restart_sec(node_dir),
                 sum(i.size for i in lock.images), len(lock.images))


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    problem = preflight(args.store)
    if problem:
        sys.stderr.write(f"bench: {problem}\n")
        return 2
    sizes = sorted(int(x) for x in args.nodes.split(","))
    for stale in fleetnet.remove_stale():
        print(f"bench: removed {stale}, left by a run that was killed")
    before = fleetreport.machine_state()
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="kiln-fleet-"))
    work.mkdir(parents=True, exist_ok=True)
    store = backend(args.store, args.store_url)
    results = []
    try:
        with fleetnet.signals_end_the_run(), fleetnet.Fleet() as net:
            link = fleetnet.Link(args.link_rate, args.link_delay, args.link_loss)
            net.build(max(sizes), link, fleetnet.Link(args.store_rate))
            setup = prepare(work, args, net, store)
            setup.store_pid = store.pid()
            for n in sizes:
                results.append(one_fleet(setup, n))
                print(fleetreport.line(results[-1]), flush=True)
    except KeyboardInterrupt:
        sys.stderr.write("bench: interrupted; cleaning up\n")
        return 130
    finally:
        store.stop()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
        print(fleetreport.leftovers(before), flush=True)
    fleetreport.table(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
