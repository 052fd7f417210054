#!/usr/bin/env python3
"""A fault-injecting HTTP proxy in front of the store, for bench/fleet.py.

It listens inside the store's network namespace (so what it sends leaves through the store's
shaped link) and forwards each request, path and query unchanged, to the store's origin in the
machine's own namespace, with `Host` set to the origin (a presigned URL's signature names it)
and one request per connection. Faults, drawn per request (seeded):

- ``slowdown``: that share of requests gets `503 SlowDown` with `Retry-After: retry_after`;
- ``reset``: the answer is cut at a random point of its body by a TCP reset;
- ``stall``: at a random point of its body the answer pauses ``stall_seconds``, then goes on;
- ``corrupt``: one byte of the body, at a random point, is flipped (the node must refuse it);
- an outage window (``outage_start``, epoch seconds, for ``outage_seconds``): every connection
  is reset as soon as its request arrives, and every answer in flight is cut when it begins;
- ``delay``: each answer is held back this many seconds (the kernel here has no netem: this
  stands for the round trips of a request on the node's link).

Every request is logged (client, path, Range, status, fault, bytes, times) with the peak of
concurrent client connections; SIGTERM writes the log as JSON and ends the proxy.

    fleetproxy.py --netns NS --listen IP:PORT --upstream http://127.0.0.1:P --log FILE
                  [--faults JSON]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import urlsplit

CLONE_NEWNET = 0x40000000
CHUNK = 256 << 10
HEAD_LIMIT = 64 << 10
SLOWDOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
            b"<Message>Please reduce your request rate.</Message></Error>\n")


@dataclass
class Faults:
    slowdown: float = 0.0
    retry_after: int = 2
    reset: float = 0.0
    stall: float = 0.0
    stall_seconds: float = 20.0
    corrupt: float = 0.0
    outage_start: float = 0.0
    outage_seconds: float = 0.0
    delay: float = 0.0
    seed: int = 1

    def in_outage(self, now: float) -> bool:
        return self.outage_seconds > 0 and (
            self.outage_start <= now < self.outage_start + self.outage_seconds)


def in_netns(name: str, make: Any) -> Any:
    """Call ``make()`` with this thread in network namespace ``name``, then come back."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        try:
            return make()
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a store that drops the connection."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_head(sock: socket.socket, first: bytes = b"") -> tuple[bytes, bytes]:
    """An HTTP head (through the blank line) and whatever body bytes came with it."""
    data = first
    while b"\r\n\r\n" not in data:
        if len(data) > HEAD_LIMIT:
            raise ValueError("head too long")
        more = sock.recv(CHUNK)
        if not more:
            raise ConnectionError("closed before the head ended")
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def header(head: bytes, name: str) -> str | None:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def forward_head(head: bytes, host: str) -> bytes:
    """The client's request for the origin: Host rewritten, one request per connection."""
    lines = head.decode("latin-1").split("\r\n")
    kept = [line for line in lines[1:] if line and line.split(":", 1)[0].strip().lower()
            not in ("host", "connection", "keep-alive", "proxy-connection")]
    return "\r\n".join([lines[0], f"Host: {host}", *kept, "Connection: close", "", ""]).encode(
        "latin-1")


class Proxy:
    def __init__(self, listener: socket.socket, upstream: str, faults: Faults) -> None:
        parts = urlsplit(upstream)
        self.origin = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.host = parts.netloc
        self.listener = listener
        self.faults = faults
        self.rng = random.Random(faults.seed)
        self.lock = threading.Lock()
        self.open = 0
        self.peak = 0
        self.log: list[dict[str, Any]] = []
        self.stopping = threading.Event()

    def draw(self) -> tuple[str, float]:
        """This request's fault and where in the body it strikes (0..1)."""
        f = self.faults
        with self.lock:
            r, at = self.rng.random(), self.rng.uniform(0.05, 0.95)
        for name, share in (("slowdown", f.slowdown), ("reset", f.reset), ("stall", f.stall),
                            ("corrupt", f.corrupt)):
            if r < share:
                return name, at
            r -= share
        return "", at

    def serve(self) -> None:
        self.listener.settimeout(0.5)
        while not self.stopping.is_set():
            try:
                client, addr = self.listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            threading.Thread(target=self.handle, args=(client, addr[0]), daemon=True).start()

    def handle(self, client: socket.socket, addr: str) -> None:
        with self.lock:
            self.open += 1
            self.peak = max(self.peak, self.open)
        entry: dict[str, Any] = {"client": addr, "start": time.time(), "bytes": 0,
                                 "status": 0, "fault": "", "outcome": "ok"}
        try:
            self.exchange(client, entry)
        except (OSError, ValueError) as exc:
            entry["outcome"] = entry["outcome"] if entry["outcome"] != "ok" else (
                f"error: {type(exc).__name__}")
        finally:
            entry["end"] = time.time()
            with self.lock:
                self.open -= 1
                self.log.append(entry)
            if entry["outcome"] in ("reset", "outage"):
                reset(client)
            else:
                client.close()

    def exchange(self, client: socket.socket, entry: dict[str, Any]) -> None:
        head, _ = read_head(client)
        entry["path"] = head.split(b" ", 2)[1].decode("latin-1").split("?", 1)[0]
        entry["range"] = header(head, "range")
        if self.faults.in_outage(time.time()):
            entry["fault"] = entry["outcome"] = "outage"
            return
        fault, at = self.draw()
        entry["fault"] = fault
        if self.faults.delay > 0:
            time.sleep(self.faults.delay)
        if fault == "slowdown":
            entry["status"] = 503
            client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                           + f"Retry-After: {self.faults.retry_after}\r\n".encode()
                           + f"Content-Length: {len(SLOWDOWN)}\r\nConnection: close\r\n\r\n"
                           .encode() + SLOWDOWN)
            return
        with socket.create_connection(self.origin, timeout=30) as up:
            up.sendall(forward_head(head, self.host))
            rhead, body = read_head(up)
            entry["status"] = int(rhead.split(b" ", 2)[1])
            length = int(header(rhead, "content-length") or -1)
            client.sendall(rhead)
            cut = int(length * at) if fault and length > 0 else -1
            self.relay(up, client, body, cut, fault, entry)

    def relay(self, up: socket.socket, client: socket.socket, first: bytes, cut: int,
              fault: str, entry: dict[str, Any]) -> None:
        """Copy the body; at byte ``cut`` reset, stall or flip a byte; cut all at an outage."""
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        pending = memoryview(first)
        sent = 0
        while True:
            if self.faults.in_outage(time.time()):
                entry["outcome"] = "outage"
                return
            if cut >= 0 and sent >= cut and fault != "corrupt":
                if fault == "reset":
                    entry["outcome"] = "reset"
                    return
                self.stopping.wait(self.faults.stall_seconds)
                cut = -1
            if not pending:
                want = CHUNK if cut < 0 else max(1, min(CHUNK, cut - sent))
                n = up.recv_into(view[:want])
                if n == 0:
                    return
                pending = view[:n]
            if cut >= 0 and sent >= cut:  # corrupt: this byte is flipped
                pending = memoryview(bytes([pending[0] ^ 0xFF]) + bytes(pending[1:]))
                cut = -1
            take = pending if cut < 0 else pending[:max(1, cut - sent)]
            client.sendall(take)
            sent += len(take)
            entry["bytes"] = sent
            pending = pending[len(take):]

    def report(self) -> dict[str, Any]:
        with self.lock:
            return {"peak_connections": self.peak, "faults": asdict(self.faults),
                    "requests": list(self.log)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--netns", required=True)
    parser.add_argument("--listen", required=True, help="IP:PORT inside the namespace")
    parser.add_argument("--upstream", required=True, help="the store's origin, http://HOST:PORT")
    parser.add_argument("--log", required=True)
    parser.add_argument("--faults", default="{}", help="JSON: the fields of Faults")
    args = parser.parse_args()
    known = {f.name for f in fields(Faults)}
    faults = Faults(**{k: v for k, v in json.loads(args.faults).items() if k in known})
    ip, _, port = args.listen.rpartition(":")

    def listen() -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, int(port)))
        sock.listen(4096)
        return sock

    threading.stack_size(512 << 10)
    proxy = Proxy(in_netns(args.netns, listen), args.upstream, faults)
    signal.signal(signal.SIGTERM, lambda *_: proxy.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: proxy.stopping.set())
    print(f"listening {args.listen}", flush=True)
    proxy.serve()
    tmp = f"{args.log}.tmp"
    with open(tmp, "w") as out:
        json.dump(proxy.report(), out)
    os.replace(tmp, args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
