"""`kiln try`: boot a throwaway VM with the rendered user-data and read the importer's verdict.

The base image is never written: the VM boots a copy-on-write overlay. A NoCloud seed
(`cidata`) carries the user-data, rendered for this boot with the store's base URL rewritten
to the host as the guest sees it through qemu's user-mode network (10.0.2.2). With an
inventory node, the PXE path instead: that node's nocloud-net seed, rendered by the code
`render --inventory` uses, is served over HTTP and named on the kernel command line
(`ds=nocloud-net;s=URL`, as a PXE menu's append line would; without a kernel, in the SMBIOS
serial number, which cloud-init reads the same way). The user-data gains two last steps:
print the import status, the guest's `ctr images ls` and the unit ordering between markers
on the serial console, then power off.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kiln.errors import KilnError
from kiln.httpserve import serve
from kiln.inventory import Node
from kiln.lock import Lock, images_for_roles, node_roles
from kiln.model import CloudInitSnippets, DirStore, Environment, Store
from kiln.render import PlainLocator, Rendered, Renderer, render_nodes

GUEST_HOST = "10.0.2.2"  # the host's loopback, seen from a qemu user-mode guest
BEGIN, END = "KILN-TRY-BEGIN", "KILN-TRY-END"
QEMU = "qemu-system-x86_64"

REPORT = f"""\
exec > /dev/ttyS0 2>&1
echo {BEGIN}
echo "hostname: $(hostname)"
echo "status: $(cat /var/lib/kiln/import-status.json 2>/dev/null || echo '{{}}')"
echo "check: $(sh /usr/local/lib/kiln/import-images --check \
--status /run/kiln-check.json >/dev/null 2>&1; cat /run/kiln-check.json 2>/dev/null || echo '{{}}')"
systemctl show kiln-import.service -p Before -p After -p WantedBy -p ActiveState \
-p ExecMainStartTimestampMonotonic -p ExecMainExitTimestampMonotonic -p Restart -p NRestarts \
| sed 's/^/unit: /'
systemctl show kubelet.service -p After -p Requires -p Wants -p ActiveState \
-p ExecMainStartTimestampMonotonic | sed 's/^/kubelet: /'
cat /var/log/kiln-try-kubelet 2>/dev/null | sed 's/^/kubelet-saw: /'
ctr -n k8s.io images ls 2>/dev/null | sed 's/^/ctr: /'
echo {END}
"""


class TryError(KilnError):
    pass


@dataclass(frozen=True)
class TryResult:
    ok: bool
    seconds: float
    status: dict[str, Any]
    check: dict[str, Any]
    lines: list[str]  # everything between the markers

    def field(self, prefix: str) -> list[str]:
        return [line[len(prefix):].strip() for line in self.lines if line.startswith(prefix)]


def accelerator() -> str:
    """TCG unless KILN_ACCEL=kvm and KVM answers: /dev/kvm alone proves nothing here."""
    if os.environ.get("KILN_ACCEL") != "kvm":
        return "tcg,thread=multi"
    try:
        subprocess.run([QEMU, "-accel", "kvm", "-machine", "none", "-nodefaults",
                        "-display", "none", "-S", "-monitor", "none", "-daemonize",
                        "-pidfile", os.devnull], timeout=10, check=True, capture_output=True)
        return "kvm"
    except (subprocess.SubprocessError, OSError):
        return "tcg,thread=multi"


def image_format(path: Path) -> str:
    done = subprocess.run(["qemu-img", "info", "--output", "json", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise TryError(f"{path}: not a disk image qemu-img can read: {done.stderr.strip()}")
    return str(json.loads(done.stdout)["format"])


def guest_url(url: str) -> str:
    """Rewrite a loopback base URL to the host as a user-mode guest reaches it."""
    return re.sub(r"^(https?://)(127\.0\.0\.1|localhost)\b", rf"\g<1>{GUEST_HOST}", url)


@contextlib.contextmanager
def store_for_guest(store: Store) -> Iterator[str | None]:
    """The base URL a qemu user-mode guest fetches the store's objects from (`try`, `golden`):
    a dir store is served over HTTP until the block ends; another store's own ``url``, a
    loopback host rewritten to the host as the guest sees it; None when it has no URL."""
    if isinstance(store, DirStore):
        server = serve(store.path)
        try:
            yield f"http://{GUEST_HOST}:{server.server_address[1]}/"
        finally:
            server.shutdown()
            server.server_close()
    else:
        yield guest_url(store.url) if store.url else None


@dataclass
class Trial:
    env: Environment
    lock: Lock
    base_image: Path
    role: str | None = None
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    timeout: float = 1200.0
    memory: int = 2048
    cpus: int = 2
    serve_store: bool = True  # False: boot with no store reachable (a golden image)
    # True: the report waits until the import has succeeded (systemd retrying it), as a
    # hold-kubelet node's join step does; False: it comes after the first run, whatever it did
    wait_for_import: bool = False
    node: Node | None = None  # an inventory node: boot its per-node seed over HTTP (PXE path)
    # kept between runs when given (a node booted again, e.g. with a new release's user-data);
    # else a throwaway overlay of the base image
    overlay: Path | None = None
    log: Callable[[str], None] = print

    @property
    def roles(self) -> tuple[str, ...] | None:
        if self.node is not None:
            return self.node.roles or None
        return node_roles(self.role)

    def renderer(self, base_url: str) -> Renderer:
        snippets = CloudInitSnippets(
            write_files=self.env.cloud_init.write_files,
            runcmd=(*self.env.cloud_init.runcmd, ["sh", "-c", REPORT],
                    ["systemctl", "poweroff"]),
        )
        env = replace(self.env, cloud_init=snippets,
                      node=replace(self.env.node, user_data_limit=1 << 20))
        # the report runs after the first import run, whatever its result (hold-kubelet would
        # wait for a success that may never come); the units keep the environment's policy
        return Renderer(env, self.lock, PlainLocator(base_url),
                        runcmd_waits_for_success=self.wait_for_import)

    def user_data(self, base_url: str) -> bytes:
        images = images_for_roles(self.lock, self.roles)
        data, _ = self.renderer(base_url).user_data_bytes(images, self.roles)
        return data

    def seed(self, work: Path, base_url: str, served: contextlib.ExitStack) -> tuple[Path | None,
                                                                                     str | None]:
        """The cidata disk (environment-wide user-data), or, for an inventory node, its
        nocloud-net seed URL: `render --inventory`'s own code writes it, served over HTTP."""
        if self.node is not None:
            render_nodes(self.renderer(base_url), work / "seeds" / "nodes", [self.node],
                         Rendered())
            server = serve(work / "seeds")
            served.callback(server.server_close)
            served.callback(server.shutdown)
            port = server.server_address[1]
            return None, f"http://{GUEST_HOST}:{port}/nodes/{self.node.hostname}/"
        (work / "user-data").write_bytes(self.user_data(base_url))
        # a new instance every boot: cloud-init applies this user-data even on a kept overlay
        (work / "meta-data").write_text(f"instance-id: kiln-try-{os.getpid()}-{time.time_ns()}\n"
                                        "local-hostname: kiln-try\n")
        disk = work / "seed.img"
        subprocess.run(["cloud-localds", str(disk), str(work / "user-data"),
                        str(work / "meta-data")], check=True, capture_output=True)
        return disk, None

    def qemu_argv(self, work: Path, overlay: Path, seed: Path | None,
                  seed_url: str | None = None) -> list[str]:
        argv = [QEMU, "-accel", accelerator(), "-cpu", "max", "-smp", str(self.cpus),
                "-m", str(self.memory), "-nodefaults", "-display", "none",
                "-serial", f"file:{work / 'console.log'}",
                "-drive", f"file={overlay},if=virtio,format=qcow2",
                "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
                "-no-reboot"]
        if seed is not None:
            argv += ["-drive", f"file={seed},if=virtio,format=raw,readonly=on"]
        datasource = f"ds=nocloud-net;s={seed_url}" if seed_url else ""
        if self.kernel:
            argv += ["-kernel", str(self.kernel)]
            if self.initrd:
                argv += ["-initrd", str(self.initrd)]
            append = self.append or "root=/dev/vda rw console=ttyS0"
            argv += ["-append", f"{append} {datasource}".strip()]
        elif datasource:
            argv += ["-smbios", "type=1,serial=" + datasource.replace(",", ",,")]
        return argv

    def run(self) -> TryResult:
        for tool in (QEMU, "qemu-img", "cloud-localds"):
            if shutil.which(tool) is None:
                raise TryError(f"{tool} is not installed (apt-get install qemu-system-x86 "
                               "qemu-utils cloud-image-utils)")
        if not self.base_image.is_file():
            raise TryError(f"base image {self.base_image} does not exist")
        if self.kernel is None and self.initrd is not None:
            raise TryError("--initrd needs --kernel")
        fmt = image_format(self.base_image)
        work = Path(tempfile.mkdtemp(prefix="kiln-try-"))
        served = contextlib.ExitStack()
        proc: subprocess.Popen[bytes] | None = None
        try:
            url = None
            if self.serve_store:
                url = served.enter_context(store_for_guest(self.env.store))
            base_url = url or f"http://{GUEST_HOST}:9/"  # nothing listens: no store reachable
            seed, seed_url = self.seed(work, base_url, served)
            overlay = self.overlay or work / "overlay.qcow2"
            if not overlay.exists():
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b",
                                str(self.base_image.resolve()), str(overlay)], check=True,
                               capture_output=True)
            argv = self.qemu_argv(work, overlay, seed, seed_url)
            self.log(f"kiln: try: booting {self.base_image} (overlay; accel "
                     f"{argv[argv.index('-accel') + 1]}), store at {base_url}"
                     + (f", seed at {seed_url}" if seed_url else ""))
            start = time.monotonic()
            (work / "console.log").touch()
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            lines = self.wait(work / "console.log", proc, start)
            return self.verdict(lines, time.monotonic() - start)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            served.close()
            shutil.rmtree(work, ignore_errors=True)

    def wait(self, console: Path, proc: subprocess.Popen[bytes], start: float) -> list[str]:
        while True:
            text = console.read_text(errors="replace")
            if END in text and BEGIN in text:
                body = text.split(BEGIN, 1)[1].split(END, 1)[0]
                try:
                    proc.wait(60)  # it powers itself off
                except subprocess.TimeoutExpired:
                    proc.kill()
                return [line.rstrip("\r") for line in body.splitlines() if line.strip()]
            tail = "\n  ".join(text.strip().splitlines()[-15:]) or "(nothing on the console)"
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                raise TryError(f"the VM stopped before the importer reported "
                               f"({err or 'exit ' + str(proc.returncode)}); last console "
                               f"lines:\n  {tail}")
            if time.monotonic() - start > self.timeout:
                raise TryError(f"no importer result after {self.timeout:.0f}s; last console "
                               f"lines:\n  {tail}")
            time.sleep(1)

    def verdict(self, lines: list[str], seconds: float) -> TryResult:
        def parse(prefix: str) -> dict[str, Any]:
            found = [line for line in lines if line.startswith(prefix)]
            try:
                return dict(json.loads(found[0][len(prefix):])) if found else {}
            except ValueError:
                return {}

        status, check = parse("status: "), parse("check: ")
        wanted = images_for_roles(self.lock, self.roles)
        seen = {i.get("ref"): i for i in check.get("images", [])}
        ok = bool(check.get("ok")) and all(
            seen.get(i.ref, {}).get("image_id") == i.image_id
            and seen.get(i.ref, {}).get("digest_ref") == i.digest_ref
            and seen.get(i.ref, {}).get("state") == "present" for i in wanted)
        if self.node is not None:  # its own name, and exactly its roles' images
            hostname = [line[len("hostname: "):] for line in lines
                        if line.startswith("hostname: ")]
            held = {line.split()[1] for line in lines
                    if line.startswith("ctr: ") and len(line.split()) > 1}
            held = {ref for ref in held if ref != "REF" and "@" not in ref
                    and not ref.startswith("sha256:")}  # names, not digest records
            ok = ok and hostname == [self.node.hostname] and held == {i.ref for i in wanted}
        return TryResult(ok, seconds, status, check, lines)
