"""bench/fleet.py's figures: from the proxy's log, the nodes' folders and /proc."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench import fleetnet
from bench.fleetnode import Outcome
from kiln import localengine
from kiln.containerd import Ctr

MB = 1 << 20


@dataclass
class Cpu:
    """CPU seconds: the machine's busy time and some processes', between two looks."""

    wall: float
    busy: float
    procs: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def now(pids: list[int | None]) -> Cpu:
        with open("/proc/stat") as stat_file:
            ticks = [int(x) for x in stat_file.readline().split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / tick  # all but idle and iowait
        procs = {}
        for name, pid in zip(("proxy", "store"), pids, strict=False):
            if pid:
                with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as proc:
                    stat = proc.read().rsplit(")", 1)[1].split()
                    procs[name] = (int(stat[11]) + int(stat[12])) / tick
        return Cpu(time.time(), busy, procs)

    def since(self, pids: list[int | None], nodes: float) -> Cpu:
        later = Cpu.now(pids)
        procs = {k: later.procs.get(k, v) - v for k, v in self.procs.items()}
        procs["nodes"] = nodes
        return Cpu(later.wall - self.wall, later.busy - self.busy, procs)


def check_containerd(daemon: localengine.Daemon) -> str:
    """'ok' when the real containerd holds every fleet image, pinned; else what is wrong."""
    ctr = Ctr(str(daemon.socket))
    images = ctr.images()
    found = [ref for ref in images if "/fleet/" in ref]
    unpinned = [r for r in found if images[r].labels.get("io.cri-containerd.pinned") != "pinned"]
    if unpinned:
        return f"not pinned: {unpinned}"
    return f"ok ({len(found)} images)" if found else "no image"


@dataclass
class Result:
    n: int
    floor: float
    outage: float
    ready: list[float]  # seconds after boot, of the nodes that got ready
    requests: list[int]
    images: int
    faults: Counter[str]
    peak: int
    hit: int  # nodes that had a request cut or refused by the outage
    recovered: int
    imports: int
    unverified: int
    failed_runs: int
    sent: int
    needed: int
    cpu: Cpu
    real: list[str]
    busy_after: float | None  # share of the store's rate used from the outage's end to the last
    last_byte: float  # seconds after boot when the store sent its last byte
    tcp: dict[str, int]  # the store's TCP counters over the run

    @property
    def last(self) -> float | None:
        return max(self.ready) if len(self.ready) == self.n else None


def result(n: int, t0: float, floor: float, args: argparse.Namespace, node_bytes: int,
           images: int, log: dict[str, Any], outcomes: list[Outcome], real: list[str],
           cpu: Cpu, tcp: dict[str, int]) -> Result:
    index = {fleetnet.node_ip(i): i for i in range(n)}
    per_node = Counter(index[r["client"]] for r in log["requests"] if r["client"] in index)
    hit = {index[r["client"]] for r in log["requests"]
           if r["outcome"] == "outage" and r["client"] in index}
    ready = [o.ready - t0 for o in outcomes if o.ready is not None]
    imports = [imp for o in outcomes for imp in o.imports]
    faults = log["faults"]
    end = faults["outage_start"] + faults["outage_seconds"] if args.outage else t0
    last = max((o.ready for o in outcomes if o.ready is not None), default=None)
    busy = None
    if last is not None and last > end:
        busy = delivered(log["requests"], end, last) * 8 / args.store_rate / (last - end)
    return Result(
        n=n, floor=floor, outage=args.outage, ready=ready,
        requests=[per_node.get(i, 0) for i in range(n)], images=images,
        faults=Counter(r["fault"] or "none" for r in log["requests"]),
        peak=log["peak_connections"], hit=len(hit),
        recovered=sum(1 for i in hit if outcomes[i].ready is not None),
        imports=len(imports), unverified=sum(1 for imp in imports if not imp["verified"]),
        failed_runs=sum(o.failed_runs for o in outcomes),
        sent=sum(r["bytes"] for r in log["requests"]), needed=n * node_bytes, cpu=cpu,
        real=real, busy_after=busy, tcp=tcp,
        last_byte=max((r["end"] for r in log["requests"] if r["bytes"]), default=t0) - t0)


def delivered(requests: list[dict[str, Any]], start: float, end: float) -> float:
    """Bytes sent between ``start`` and ``end`` (each answer's spread evenly over its time)."""
    total = 0.0
    for r in requests:
        span = max(r["end"] - r["start"], 1e-6)
        overlap = min(end, r["end"]) - max(start, r["start"])
        if overlap > 0:
            total += r["bytes"] * overlap / span
    return total


def line(r: Result) -> str:
    last = f"{r.last:.1f}s" if r.last is not None else f"only {len(r.ready)}/{r.n} ready"
    return (f"bench: N={r.n}: last node ready {last}, floor {r.floor:.1f}s, "
            f"faults {dict(r.faults)}, peak {r.peak} connections, {r.failed_runs} failed runs, "
            f"unverified {r.unverified}/{r.imports}; real containerd: {', '.join(r.real)}")


def _ratio(value: float | None, floor: float) -> str:
    return f"{value / floor:.2f}x" if value is not None and floor > 0 else "-"


def table(results: list[Result], args: argparse.Namespace) -> None:
    print()
    print("Fleet: a network and store simulation (nodes other than the first "
          f"{args.real_containerd} import into a ctr stand-in that checks but does not unpack)")
    store = "radosgw (a real S3 server)" if args.store == "radosgw" else "a folder over HTTP"
    print(f"store {store}, egress {args.store_rate / 1e6:.0f} Mbit/s; links "
          f"{args.link_rate / 1e6:.0f} Mbit/s, {args.link_delay} ms, {args.link_loss}% loss; "
          f"faults: 503 {args.slowdown:.0%}"
          f" (Retry-After {args.retry_after}s), reset {args.reset:.0%}, stall {args.stall:.0%} "
          f"({args.stall_seconds:.0f}s), outage {args.outage:.0f}s at {args.outage_at:.0%} "
          "of the floor")
    head = ("N", "floor s", "+outage s", "last byte s", "ready s", "x floor", "x (floor+outage)",
            "req/node",
            "retries/node (max)", "peak conns", "recovered", "unverified")
    rows = [head]
    for r in results:
        with_outage = r.floor + r.outage
        retries = [q - r.images for q in r.requests]
        rows.append((
            str(r.n), f"{r.floor:.1f}", f"{with_outage:.1f}", f"{r.last_byte:.1f}",
            f"{r.last:.1f}" if r.last is not None else f"{len(r.ready)}/{r.n} ready",
            _ratio(r.last, r.floor), _ratio(r.last, with_outage),
            f"{sum(r.requests) / r.n:.1f}",
            f"{sum(retries) / r.n:.1f} ({max(retries)})", str(r.peak),
            f"{r.recovered}/{r.hit}", f"{r.unverified}/{r.imports}"))
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    print()
    for r in results:
        c = r.cpu
        procs = ", ".join(f"{k} {v:.1f}s" for k, v in c.procs.items())
        print(f"N={r.n}: bytes sent {r.sent / MB:.0f} MB for {r.needed / MB:.0f} MB needed "
              f"({r.sent / max(r.needed, 1):.2f}x); {r.failed_runs} failed importer runs; "
              f"CPU {c.busy / max(c.wall, 1e-9) * 50:.0f}% of 2 cores over {c.wall:.0f}s "
              f"({procs}); ready p50 {_pct(r.ready, 50)} p90 {_pct(r.ready, 90)}; the store "
              f"sent at {_share(r.busy_after)} of its rate from the outage's end to the last "
              f"node ready; store TCP: {r.tcp.get('OutSegs', 0)} segments out, "
              f"{r.tcp.get('RetransSegs', 0)} retransmitted, {r.tcp.get('TCPTimeouts', 0)} "
              "timeouts")


def _share(value: float | None) -> str:
    return f"{value:.0%}" if value is not None else "-"


def _pct(values: list[float], pct: int) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, len(ordered) * pct // 100)]:.1f}s"


def machine_state() -> dict[str, list[str]]:
    """What the bench must leave as it found it: namespaces, links and qdiscs of the machine."""
    def lines(argv: list[str]) -> list[str]:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return sorted(x for x in done.stdout.split("\n") if x.strip())

    return {"namespaces": lines(["ip", "netns", "list"]),
            "links": [x.split()[0] for x in lines(["ip", "-br", "link"])],
            "qdiscs": lines(["tc", "qdisc", "show"]),
            "iptables": lines(["iptables", "-S"])}


def leftovers(before: dict[str, list[str]]) -> str:
    after = machine_state()
    changed = [k for k in before if before[k] != after[k]]
    ours = fleetnet.ours()
    if not changed and not ours:
        return ("bench: cleanup: no namespace, veth, qdisc or iptables rule of this run is "
                f"left (namespaces: {len(after['namespaces'])}; links: "
                f"{' '.join(after['links'])})")
    return f"bench: WARNING: left behind: {changed} {ours}"
