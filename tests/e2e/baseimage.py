"""A small Debian base image for the boot tests, built once with debootstrap and cached.

The cache ($KILN_E2E_CACHE, default /var/cache/kiln-e2e) survives between runs on the same
machine; bump RECIPE when what goes into the image changes. The image boots by direct kernel
boot (vmlinuz + initrd beside it), has systemd, cloud-init (NoCloud only), containerd, curl,
zstd and openssh-server, and a stand-in kubelet.service that records, when it starts, how many
images containerd already holds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

RECIPE = "2"
SUITE = "bookworm"
APT_SOURCES = Path("/etc/apt")


def apt_mirror(suite: str = SUITE, apt: Path = APT_SOURCES) -> str:
    """The Debian mirror this machine's own apt uses for ``suite`` (main), from its sources.

    Reads deb822 ``*.sources`` and one-line ``*.list`` files; $KILN_E2E_MIRROR wins. No host
    name is written here: the mirror is whatever the machine is configured with.
    """
    if os.environ.get("KILN_E2E_MIRROR"):
        return os.environ["KILN_E2E_MIRROR"]
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list")),
             *sorted((apt / "sources.list.d").glob("*.sources"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in text.split("\n\n"):
                fields: dict[str, list[str]] = {}
                for line in stanza.splitlines():
                    key, colon, value = line.partition(":")
                    if colon and not line.startswith(("#", " ")):
                        fields[key.strip().lower()] = value.split()
                if ("deb" in fields.get("types", []) and suite in fields.get("suites", [])
                        and "main" in fields.get("components", []) and fields.get("uris")):
                    return fields["uris"][0]
        else:
            for line in text.splitlines():
                words = [w for w in line.split("#", 1)[0].split() if not w.startswith("[")]
                if len(words) >= 4 and words[0] == "deb" and words[2] == suite \
                        and "main" in words[3:]:
                    return words[1]
    raise RuntimeError(f"no apt source for Debian {suite} main in {apt}: set KILN_E2E_MIRROR "
                       "to a Debian mirror URL")

PACKAGES = ("linux-image-amd64,systemd-sysv,systemd,udev,dbus,cloud-init,containerd,curl,zstd,"
            "openssh-server,ca-certificates,ifupdown,isc-dhcp-client,iproute2,netbase")

FAKE_KUBELET = """\
[Unit]
Description=stand-in kubelet (kiln e2e): records what containerd holds when it starts
After=containerd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh /usr/local/sbin/kiln-fake-kubelet

[Install]
WantedBy=multi-user.target
"""


FAKE_KUBELET_SCRIPT = """\
#!/bin/sh
uptime=$(cut -d ' ' -f 1 /proc/uptime)
images=$(ctr -n k8s.io images ls -q | grep -vc '^sha256:')
echo "uptime=$uptime images=$images" > /var/log/kiln-try-kubelet
"""


@dataclass(frozen=True)
class BaseImage:
    disk: Path
    kernel: Path
    initrd: Path
    ssh_key: Path


def cache_dir() -> Path:
    return Path(os.environ.get("KILN_E2E_CACHE", "/var/cache/kiln-e2e"))


def run(*argv: str, **kw: object) -> None:
    subprocess.run(list(argv), check=True, **kw)  # type: ignore[call-overload]


def build(cache: Path | None = None) -> BaseImage:
    cache = cache or cache_dir()
    image = BaseImage(cache / f"base-r{RECIPE}.raw", cache / f"vmlinuz-r{RECIPE}",
                      cache / f"initrd-r{RECIPE}", cache / "ssh-key")
    stamp = cache / f"base-r{RECIPE}.ok"
    if stamp.exists():
        return image
    cache.mkdir(parents=True, exist_ok=True)
    rootfs = cache / "rootfs"
    if not (rootfs / ".kiln-debootstrap-done").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        mirror = apt_mirror()
        # debootstrap reports failure when a few packages cannot be configured without /proc
        # (python3-cryptography, and cloud-init after it); they are configured below.
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}",
                        SUITE, str(rootfs), mirror], stdout=subprocess.DEVNULL, check=False)
        if not (rootfs / "usr/bin/dpkg").exists():
            raise RuntimeError(f"debootstrap of {SUITE} from {mirror} failed")
        (rootfs / ".kiln-debootstrap-done").touch()
    mounts = []
    try:
        for name, kind in (("proc", "proc"), ("sys", "sysfs"), ("dev", None)):
            target = rootfs / name
            if kind:
                run("mount", "-t", kind, kind, str(target))
            else:
                run("mount", "--bind", "/dev", str(target))
            mounts.append(target)
        quiet = {"env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                 "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        subprocess.run(["chroot", str(rootfs), "dpkg", "--configure", "-a"], check=False,
                       **quiet)  # type: ignore[call-overload]
        run("chroot", str(rootfs), "apt-get", "-f", "install", "-y", "-q", **quiet)
        audit = subprocess.run(["chroot", str(rootfs), "dpkg", "--audit"], capture_output=True,
                               text=True, check=False)
        if audit.stdout.strip():
            raise RuntimeError(f"packages left unconfigured in the base image: {audit.stdout}")
        run("chroot", str(rootfs), "apt-get", "clean")
    finally:
        for target in reversed(mounts):
            subprocess.run(["umount", "-l", str(target)], check=False)
    etc = rootfs / "etc"
    (etc / "fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
    (etc / "hostname").write_text("kiln-base\n")
    (etc / "cloud/cloud.cfg.d/90-kiln-e2e.cfg").write_text("datasource_list: [NoCloud, None]\n")
    (etc / "systemd/system/kubelet.service").write_text(FAKE_KUBELET)
    (rootfs / "usr/local/sbin/kiln-fake-kubelet").write_text(FAKE_KUBELET_SCRIPT)
    wants = etc / "systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit, target in (("kubelet.service", "/etc/systemd/system/kubelet.service"),
                         ("containerd.service", "/lib/systemd/system/containerd.service")):
        link = wants / unit
        if not link.is_symlink():
            link.symlink_to(target)
    if not image.ssh_key.exists():
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(image.ssh_key))
    ssh = rootfs / "root/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").write_text(Path(f"{image.ssh_key}.pub").read_text())
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    initrds = sorted((rootfs / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise RuntimeError(f"no kernel or initrd under {rootfs / 'boot'}")
    shutil.copyfile(kernels[-1], image.kernel)
    shutil.copyfile(initrds[-1], image.initrd)
    image.disk.unlink(missing_ok=True)
    run("truncate", "-s", "3G", str(image.disk))
    run("mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(rootfs), str(image.disk))
    stamp.touch()
    return image
