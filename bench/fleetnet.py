"""Network namespaces for bench/fleet.py: one bridge, one store host, N nodes, shaped links.

Everything is made inside namespaces of this run (named ``kfleet<pid>-...``): a hub namespace
holds the bridge; the store and every node get a namespace of their own with a veth pair whose
other end is a port of that bridge. No interface, address, route or qdisc of the machine's own
namespace is touched: deleting the namespaces removes every veth and qdisc with them.
Addresses come from 198.18.0.0/15 (RFC 2544's range for benchmarking, routed nowhere).

Links: this kernel has tbf and htb but no netem (nor fq_codel, nor any other qdisc), so
- rate: tbf on both ends of each node's veth, and on the store's egress;
- loss: iptables `statistic` drops in each node's namespace, both directions (per packet as
  the namespace sees it: with GSO, one packet can be up to 64 KiB of segments);
- delay: not in the kernel; bench/fleetproxy.py holds each answer back by the round trips a
  request costs on the link (see there).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

NET = "198.18"  # /16: the store is .0.1, node i is .(1 + i // 250).(i % 250 + 1)
STORE_IP = f"{NET}.0.1"
PREFIX = "kfleet"


class NetError(RuntimeError):
    pass


@dataclass(frozen=True)
class Link:
    """One link's shape: rate in bits/s, one-way delay in ms, loss in percent."""

    rate: int
    delay_ms: float = 0.0
    loss_pct: float = 0.0


def node_ip(i: int) -> str:
    return f"{NET}.{1 + i // 250}.{i % 250 + 1}"


def _run(argv: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetError(f"{' '.join(argv[:6])} failed: {done.stderr.strip()[:400]}")


def _shape(link: Link, dev: str) -> str:
    """A tc batch line shaping ``dev``'s egress to ``link.rate``."""
    burst = max(256 << 10, link.rate // 8 // 250)  # >= a GSO packet, >= one 4 ms tick
    return f"qdisc add dev {dev} root handle 1: tbf rate {link.rate}bit burst {burst} latency 20ms"


def _loss(link: Link) -> str:
    """iptables-restore input dropping ``link.loss_pct`` percent of packets each way."""
    if link.loss_pct <= 0:
        return ""
    rule = f"-m statistic --mode random --probability {link.loss_pct / 100:.6f} -j DROP"
    return f"*filter\n-A INPUT {rule}\n-A OUTPUT {rule}\nCOMMIT\n"


class Fleet:
    """The namespaces of one run; ``close()`` (or the with block's end) removes them all."""

    def __init__(self) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.hub = f"{self.tag}-hub"
        self.store = f"{self.tag}-store"
        self.nodes: list[str] = []
        self.made: list[str] = []

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def node(self, i: int) -> str:
        return f"{self.tag}-n{i}"

    def exec(self, ns: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def build(self, nodes: int, node_link: Link, store_link: Link) -> None:
        """The bridge, the store's namespace and ``nodes`` node namespaces, shaped."""
        names = [self.hub, self.store, *(self.node(i) for i in range(nodes))]
        for ns in names:  # recorded first: a failure half-way still removes what exists
            self.made.append(ns)
            _run(["ip", "netns", "add", ns])
        self.nodes = names[2:]
        hub = ["link add name br0 type bridge forward_delay 0", "link set br0 up"]
        root = [f"link add name s-hub netns {self.hub} type veth peer name eth0 "
                f"netns {self.store}"]
        for i, ns in enumerate(self.nodes):
            root.append(f"link add name n{i} netns {self.hub} type veth peer name eth0 "
                        f"netns {ns}")
        _run(["ip", "-n", self.hub, "-batch", "-"], "\n".join(hub) + "\n")
        _run(["ip", "-batch", "-"], "\n".join(root) + "\n")
        ports = ["s-hub", *(f"n{i}" for i in range(nodes))]
        _run(["ip", "-n", self.hub, "-batch", "-"],
             "".join(f"link set {p} master br0 up\n" for p in ports))
        _run(["tc", "-n", self.hub, "-batch", "-"],
             "".join(_shape(node_link, f"n{i}") + "\n" for i in range(nodes)))
        self._host(self.store, STORE_IP, store_link, "")
        for i, ns in enumerate(self.nodes):
            self._host(ns, node_ip(i), node_link, _loss(node_link))

    def _host(self, ns: str, ip: str, link: Link, loss: str) -> None:
        _run(["ip", "-n", ns, "-batch", "-"],
             f"addr add {ip}/15 dev eth0\nlink set eth0 up\nlink set lo up\n")
        _run(["tc", "-n", ns, "-batch", "-"], _shape(link, "eth0") + "\n")
        if loss:
            _run(self.exec(ns, ["iptables-restore"]), loss)

    def close(self) -> None:
        """Kill what still runs in our namespaces (by PID), then delete them."""
        for ns in reversed(self.made):
            kill_inside(ns)
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
        self.made = []


def tcp_counters(ns: str) -> dict[str, int]:
    """The namespace's TCP counters: OutSegs, RetransSegs (snmp) and TCPTimeouts (netstat)."""
    found: dict[str, int] = {}
    for table in ("snmp", "netstat"):
        done = subprocess.run(["ip", "netns", "exec", ns, "cat", f"/proc/net/{table}"],
                              capture_output=True, text=True, check=False)
        lines = done.stdout.splitlines()
        for names, values in zip(lines[::2], lines[1::2], strict=False):
            for name, value in zip(names.split()[1:], values.split()[1:], strict=False):
                if name in ("OutSegs", "RetransSegs", "TCPTimeouts") and value.isdigit():
                    found[name] = int(value)
    return found


def pids_inside(ns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                          check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def kill_inside(ns: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = pids_inside(ns)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = pids_inside(ns)
        if not pids:
            return


def ours() -> list[str]:
    """This machine's namespaces named like ours (any run's)."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in done.stdout.splitlines()
            if line.startswith(PREFIX)]


def remove_stale() -> list[str]:
    """Delete the namespaces left by runs of this bench whose process is gone (a SIGKILL)."""
    removed = []
    for ns in ours():
        found = re.match(rf"{PREFIX}(\d+)-", ns)
        if found and not os.path.exists(f"/proc/{found.group(1)}"):
            kill_inside(ns)
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
            removed.append(ns)
    return removed


@contextlib.contextmanager
def signals_end_the_run() -> Iterator[None]:
    """SIGINT (even where a shell left it ignored), SIGTERM and SIGHUP end the run as Ctrl-C
    does: through every finally block."""
    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
