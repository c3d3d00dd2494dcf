"""The OpenZFS lab: QEMU guests running Debian with OpenZFS 2.3 (the ZFS that sites run), zvols as VM disks.

zfs-fuse (the `lab` and `netlab`) has no zvols, holds, bookmarks, resumable or raw send; the host's kernel
here loads no modules, so OpenZFS runs in guests. Everything comes from Debian's packages:

- **The image**, built once: `debootstrap` (bookworm, minbase, main and contrib), then in the chroot
  bookworm-backports' cloud kernel with its headers, `zfs-dkms` (DKMS builds the module for the guest's
  kernel, not the host's) and `zfsutils-linux`, and the tools the playbooks call (python3, pv, zstd, lz4,
  pigz, xz, bzip2, mbuffer, sanoid for syncoid), `qemu-guest-agent`; `mkfs.ext4 -d` turns the root into an
  image without a loop mount. Cached under `<cache>/<key>/`, the key a digest of the package versions apt
  would install and of the recipe, so a second `up` only boots, and a new package version builds anew.
- **The guests**: `qemu-system-x86_64` from bookworm-backports (QEMU 7.2 crashes this kernel under TCG),
  KVM when `/dev/kvm` really runs a guest (here it is a paravirtual KVM that refuses stock kernels at
  once), else TCG, said in the output. Per guest a qcow2 overlay on the read-only base image, a second
  virtio disk (serial `pool0`) for its pool, a tap on the lab's bridge (the host holds `<subnet>.1`, the
  guests `.2`, `.3`, ...) that carries ssh from the controller and between guests, a serial console in
  `console.log` (watched for a panic while booting) and a guest agent socket `qga.sock`. The guest takes
  its hostname, address and the lab's ssh key from the kernel command line and makes its own ssh host keys
  at first boot.
- **VMs** on compute guests: zvols `<pool>/<uuid>-disk<N>` with the `vmbackup:*` properties, holding random
  data; the backup guests have a pool named as the compute guests' (one inventory variable for both).
- **The inventory**: ssh only, like netlab's (`hosts.yml` in the lab's folder).

`up`, `status` and `down` are idempotent; `down` stops every guest and removes taps, bridge and folder (the
image cache stays).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import zlib

from vmbackup_lab import lab as labmod
from vmbackup_lab.lab import LabVM, pid_alive, read_pid, say
from vmbackup_lab.netlab import (  # noqa: F401 (parse_nodes: the CLI's --node)
    BridgeLab,
    ensure_bridge,
    link_exists,
    link_is_up,
    parse_nodes,
    remove_bridge,
    set_link,
    write_ssh_inventory,
)

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What the guests run; versions come from bookworm-backports where it has the package.
BACKPORTS = ["linux-image-cloud-amd64", "linux-headers-cloud-amd64", "zfs-dkms", "zfsutils-linux",
             "qemu-guest-agent"]
# debootstrap --include: what a node needs to be driven by Ansible over ssh and to run the playbooks' pipes.
BASE_PACKAGES = ["systemd-sysv", "udev", "kmod", "openssh-server", "openssh-client", "python3", "iproute2",
                 "ifupdown", "procps", "pv", "zstd", "lz4", "pigz", "xz-utils", "bzip2", "mbuffer", "e2fsprogs",
                 "ca-certificates", "util-linux"]
BUILD_PACKAGES = ["dkms", "build-essential"]
LATER_PACKAGES = ["sanoid"]  # syncoid, the benchmarks' baseline; pulls in perl
# The host's: QEMU 10 from backports, debootstrap, what the lab's network needs, and e2fsprogs (mkfs.ext4 -d
# makes the image; the guest agent test reads ext4 images).
HOST_BACKPORTS = ["qemu-system-x86", "qemu-utils"]
HOST_PACKAGES = ["debootstrap", "iproute2", "openssh-client", "zstd", "e2fsprogs"]
BACKPORTS_SOURCE = "/etc/apt/sources.list.d/vmbackup-backports.sources"
# Bump when the recipe below changes what an image holds: the cache key includes it.
RECIPE = 5
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ROOT_LABEL = "vmbroot"
CACHE = os.environ.get("VMBACKUP_OZLAB_CACHE", "/var/cache/vmbackup/openzfs-lab")
SSH_OPTIONS = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "LogLevel=ERROR",
               "ServerAliveInterval=5", "ServerAliveCountMax=3", "ConnectTimeout=10", "BatchMode=yes"]

# Runs at every boot before sshd: hostname, lab address and key from the kernel command line, host keys.
FIRSTBOOT = r"""#!/bin/sh
# vmbackup OpenZFS lab: configure this guest from the kernel command line (vmbackup.*=...).
set -eu
for word in $(cat /proc/cmdline); do
  case "$word" in
    vmbackup.hostname=*) name="${word#*=}" ;;
    vmbackup.addr=*) addr="${word#*=}" ;;
    vmbackup.key=*) key="${word#*=}" ;;
  esac
done
if [ -n "${name:-}" ]; then
  echo "$name" > /etc/hostname
  hostname "$name"
  printf '127.0.0.1 localhost\n127.0.1.1 %s\n' "$name" > /etc/hosts
fi
if [ -n "${key:-}" ]; then
  mkdir -p -m 700 /root/.ssh
  echo "ssh-ed25519 $key vmbackup-ozlab" > /root/.ssh/authorized_keys
  chmod 600 /root/.ssh/authorized_keys
fi
ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || ssh-keygen -A
ip link set lo up
if [ -n "${addr:-}" ]; then
  ip link set eth0 up
  ip addr replace "$addr" dev eth0
fi
"""
FIRSTBOOT_UNIT = """[Unit]
Description=vmbackup OpenZFS lab: hostname, address, ssh key from the kernel command line
DefaultDependencies=no
After=local-fs.target systemd-udev-settle.service
Before=ssh.service network-pre.target
Wants=network-pre.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/vmbackup-firstboot
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
"""
# A fsfreeze hook (qemu-ga's fsfreeze-hook runs every script in fsfreeze-hook.d): it logs each call to a
# place that is not frozen, as a database's quiesce script would act.
FREEZE_HOOK = """#!/bin/sh
echo "$1 $(date +%s.%N)" >> /run/vmbackup-fsfreeze.log
"""
SSHD_CONFIG = """# vmbackup OpenZFS lab
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
MaxStartups 100
MaxSessions 100
ClientAliveInterval 3
ClientAliveCountMax 3
"""


def run(argv: list[str], check: bool = True, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env or labmod.ZFS_ENV, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError("%s failed (rc=%d): %s" % (" ".join(argv[:12]), proc.returncode,
                                                      (proc.stderr or proc.stdout).strip()[-2000:]))
    return proc


# -- the host and the image -----------------------------------------------------------------------------------
def ensure_host() -> None:
    """bookworm-backports in apt's sources (QEMU 10 and the guest's kernel come from there); QEMU, qemu-img,
    debootstrap."""
    if not os.path.exists(BACKPORTS_SOURCE):
        say("adding bookworm-backports (main contrib) to apt's sources: %s" % BACKPORTS_SOURCE)
        with open(BACKPORTS_SOURCE, "w") as handle:
            handle.write("Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main contrib\n"
                         "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n" % (MIRROR, SUITE))
        run(["apt-get", "update", "-qq"])
    missing = [p for p in HOST_PACKAGES if not installed(p)]
    old_qemu = not shutil.which("qemu-system-x86_64") or qemu_major() < 10
    if missing or old_qemu:
        say("installing on this machine: %s" % " ".join(missing + (HOST_BACKPORTS if old_qemu else [])))
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if not apt_knows("%s-backports" % SUITE):
            run(["apt-get", "update", "-qq"], env=env)
        if old_qemu:
            run(["apt-get", "install", "-y", "-qq", "-t", SUITE + "-backports", *HOST_BACKPORTS], env=env)
        if missing:
            run(["apt-get", "install", "-y", "-qq", *missing], env=env)


def installed(package: str) -> bool:
    out = run(["dpkg-query", "-W", "-f=${Status}", package], check=False).stdout
    return "install ok installed" in out


def apt_knows(suite: str) -> bool:
    return suite in run(["apt-cache", "policy"], check=False).stdout


def qemu_major() -> int:
    out = run(["qemu-system-x86_64", "--version"], check=False).stdout.split()
    try:
        return int(out[out.index("version") + 1].split(".")[0])
    except (ValueError, IndexError):
        return 0


def package_versions() -> dict[str, str]:
    """The versions apt would install in the guest: backports' for BACKPORTS, the suite's for the rest."""
    versions = {}
    for package in BACKPORTS + BUILD_PACKAGES + LATER_PACKAGES:
        out = run(["apt-cache", "madison", package]).stdout
        rows = [[f.strip() for f in line.split("|")] for line in out.splitlines() if line.count("|") >= 2]
        wanted = SUITE + "-backports" if package in BACKPORTS else SUITE
        for _name, version, source in rows:
            if (" %s/" % wanted) in source:
                versions[package] = version
                break
        else:
            raise RuntimeError("apt knows no %s in %s (apt-get update, and is %s in the sources?)"
                               % (package, wanted, wanted))
    return versions


@dataclasses.dataclass
class Image:
    """A built guest image: `base.img` (raw ext4, read-only), the kernel and initrd, what it holds."""

    folder: str

    @property
    def base(self) -> str:
        return os.path.join(self.folder, "base.img")

    @property
    def kernel(self) -> str:
        return os.path.join(self.folder, "vmlinuz")

    @property
    def initrd(self) -> str:
        return os.path.join(self.folder, "initrd.img")

    @property
    def manifest(self) -> dict:
        with open(os.path.join(self.folder, "image.json")) as handle:
            return json.load(handle)


def image_key(versions: dict[str, str]) -> str:
    text = json.dumps({"suite": SUITE, "recipe": RECIPE, "versions": versions, "base": BASE_PACKAGES},
                      sort_keys=True)
    return "%s-zfs%s-%s" % (SUITE, versions["zfsutils-linux"].split("-")[0], hashlib.sha256(
        text.encode()).hexdigest()[:12])


def ensure_image(cache: str = CACHE) -> Image:
    """The image for today's package versions, built if the cache lacks it (about 6 minutes here)."""
    ensure_host()
    versions = package_versions()
    folder = os.path.join(cache, image_key(versions))
    image = Image(folder)
    if os.path.exists(os.path.join(folder, "image.json")):
        return image
    os.makedirs(cache, exist_ok=True)
    work = folder + ".building"
    with open(os.path.join(cache, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(folder, "image.json")):  # built by another process meanwhile
            return image
        started = time.monotonic()
        say("building the OpenZFS guest image %s (once; zfs %s, kernel %s)"
            % (os.path.basename(folder), versions["zfsutils-linux"], versions["linux-image-cloud-amd64"]))
        build_image(work, versions)
        took = time.monotonic() - started
        with open(os.path.join(work, "image.json"), "w") as handle:
            json.dump({"versions": versions, "recipe": RECIPE, "suite": SUITE, "build_seconds": round(took)},
                      handle, indent=1)
        if os.path.exists(folder):
            shutil.rmtree(folder)
        os.remove(os.path.join(work, "debootstrap.done"))
        os.rename(work, folder)
        say("image built in %d s: %s" % (took, folder))
        others = [name for name in os.listdir(cache) if name != os.path.basename(folder)
                  and os.path.exists(os.path.join(cache, name, "image.json"))]
        if others:  # each is about 1 GB; a lab may still boot from one, so they are only named here
            say("older images in %s (remove them once no lab uses them): %s" % (cache, ", ".join(others)))
    return image


def build_image(work: str, versions: dict[str, str]) -> None:
    root = os.path.join(work, "root")
    bootstrapped = os.path.join(work, "debootstrap.done")
    for path in ("proc", "sys", "dev/pts", "dev"):  # left by a build that was killed
        run(["umount", "-l", os.path.join(root, path)], check=False)
    if not os.path.exists(bootstrapped):  # a root debootstrap finished is kept for the next try
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(root)
    step = time.monotonic()

    def took(what: str) -> None:
        nonlocal step
        say("  %s: %d s" % (what, time.monotonic() - step))
        step = time.monotonic()

    if not os.path.exists(bootstrapped):
        run(["debootstrap", "--variant=minbase", "--components=main,contrib",
             "--include=" + ",".join(BASE_PACKAGES), SUITE, root, MIRROR])
        open(bootstrapped, "w").close()
        took("debootstrap")
    write(root, "etc/apt/sources.list",
          "deb %s %s main contrib\ndeb %s %s-backports main contrib\n" % (MIRROR, SUITE, MIRROR, SUITE))
    write(root, "usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)  # no daemon starts in the chroot
    mounts = []
    try:
        for source, target, kind in (("proc", "proc", "proc"), ("sysfs", "sys", "sysfs"), ("/dev", "dev", None),
                                     ("devpts", "dev/pts", "devpts")):
            path = os.path.join(root, target)
            os.makedirs(path, exist_ok=True)
            run(["mount", "--bind", source, path] if kind is None else ["mount", "-t", kind, source, path])
            mounts.append(path)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
        chroot = ["chroot", root]
        install = [*chroot, "apt-get", "install", "-y", "-qq", "--no-install-recommends"]
        backports = [*install, "-t", SUITE + "-backports"]  # their dependencies come from there too
        run([*chroot, "apt-get", "update", "-qq"], env=env)
        pinned = ["%s=%s" % (p, versions[p]) for p in ("linux-image-cloud-amd64", "linux-headers-cloud-amd64")]
        run([*backports, *pinned, "initramfs-tools"], env=env)
        run([*install, *BUILD_PACKAGES], env=env)
        took("kernel, headers, dkms, compilers")
        run([*backports, *("%s=%s" % (p, versions[p]) for p in ("zfs-dkms", "zfsutils-linux"))], env=env)
        took("zfs-dkms (module built by DKMS) and zfsutils-linux")
        run([*backports, "qemu-guest-agent=" + versions["qemu-guest-agent"]], env=env)
        run([*install, *LATER_PACKAGES], env=env)
        # The compilers stay: zfs-dkms depends on dkms, which depends on them, and purging them would take the
        # built module away with zfs-dkms. apt's caches and the docs go.
        run([*chroot, "apt-get", "clean"], env=env)
        took("guest agent, sanoid, clean-up")
        kernels = sorted(os.listdir(os.path.join(root, "lib", "modules")))
        built = [k for k in kernels if any(name.startswith("zfs.ko") for folder in ("updates/dkms", "extra")
                                           for name in listdir(os.path.join(root, "lib/modules", k, folder)))]
        if not built:
            raise RuntimeError("DKMS built no zfs module for %s (see dkms status in %s)" % (kernels, root))
    finally:
        for path in reversed(mounts):
            run(["umount", "-l", path], check=False)
    os.remove(os.path.join(root, "usr/sbin/policy-rc.d"))
    for folder in ("usr/share/doc", "usr/share/man", "usr/share/locale", "var/lib/apt/lists"):
        shutil.rmtree(os.path.join(root, folder), ignore_errors=True)
    configure_root(root, kernel=built[-1])
    vmlinuz = os.path.join(root, "boot", "vmlinuz-" + built[-1])
    initrd = os.path.join(root, "boot", "initrd.img-" + built[-1])
    shutil.copy(vmlinuz, os.path.join(work, "vmlinuz"))
    shutil.copy(initrd, os.path.join(work, "initrd.img"))
    image = os.path.join(work, "base.img")
    run(["truncate", "-s", "4G", image])
    run(["mkfs.ext4", "-q", "-L", ROOT_LABEL, "-d", root, image])
    took("mkfs.ext4 -d")
    shutil.rmtree(root)


def listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def write(root: str, path: str, text: str, mode: int = 0o644) -> None:
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as handle:
        handle.write(text)
    os.chmod(full, mode)


def configure_root(root: str, kernel: str) -> None:
    """What every guest shares: fstab, the first-boot unit, sshd, the guest agent's hook, ZFS at boot."""
    write(root, "etc/fstab", "LABEL=%s / ext4 defaults,noatime 0 1\n" % ROOT_LABEL)
    write(root, "etc/hostname", "ozlab\n")
    write(root, "usr/local/sbin/vmbackup-firstboot", FIRSTBOOT, 0o755)
    write(root, "etc/systemd/system/vmbackup-firstboot.service", FIRSTBOOT_UNIT)
    wants = os.path.join(root, "etc/systemd/system/multi-user.target.wants")
    os.makedirs(wants, exist_ok=True)
    link = os.path.join(wants, "vmbackup-firstboot.service")
    if not os.path.lexists(link):
        os.symlink("/etc/systemd/system/vmbackup-firstboot.service", link)
    write(root, "etc/ssh/sshd_config.d/vmbackup-lab.conf", SSHD_CONFIG)
    for name in listdir(os.path.join(root, "etc/ssh")):
        if name.startswith("ssh_host_"):
            os.remove(os.path.join(root, "etc/ssh", name))  # each guest makes its own at first boot
    write(root, "etc/qemu/fsfreeze-hook.d/vmbackup-log", FREEZE_HOOK, 0o755)
    # qemu-guest-agent 10.0's fsfreeze-hook (#!/bin/sh) falls back to syslog while its log file does not exist,
    # and that branch uses bash's ${PIPESTATUS[0]}: dash stops with "Bad substitution", so the first freeze
    # of every guest fails. With the log file there it takes the other branch.
    write(root, "var/log/qga-fsfreeze-hook.log", "", 0o600)
    # qemu-ga runs the hooks only when told where fsfreeze-hook is (-F).
    write(root, "etc/default/qemu-guest-agent", 'DAEMON_ARGS="-F/etc/qemu/fsfreeze-hook"\n')
    write(root, "etc/systemd/system/qemu-guest-agent.service.d/vmbackup-lab.conf",
          "[Service]\nExecStart=\nExecStart=/usr/sbin/qemu-ga -F/etc/qemu/fsfreeze-hook\n")
    write(root, "etc/modules-load.d/zfs.conf", "zfs\n")
    # No password, key only; the serial console logs in nobody.
    run(["chroot", root, "passwd", "-l", "root"], check=False)
    write(root, "etc/vmbackup-ozlab", "kernel %s\n" % kernel)


# -- guests ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Guest:
    """One QEMU guest of the lab: a compute or backup node running OpenZFS, reached by ssh at its address."""

    name: str
    role: str  # compute or backup
    number: int  # the last byte of its address; names its tap
    directory: str
    prefix: str
    subnet: str
    pools: list[str]
    key: str
    pool_size: str = "2G"
    memory_mb: int = 1536
    drives: list[str] = dataclasses.field(default_factory=list)  # raw files attached as disks data0, data1, ...

    @property
    def address(self) -> str:
        return "%s.%d" % (self.subnet, self.number)

    @property
    def tap(self) -> str:
        return "%st%d" % (self.prefix, self.number)

    def path(self, *parts: str) -> str:
        return os.path.join(self.directory, *parts)

    @property
    def qga_socket(self) -> str:
        return self.path("qga.sock")

    @property
    def pid(self) -> int | None:
        pid = read_pid(self.path("qemu.pid"), "qemu-system-x86_64")
        return pid if pid_alive(pid) else None

    # -- commands in the guest ------------------------------------------------------------------------------
    def ssh_argv(self, argv: list[str]) -> list[str]:
        """ssh to the guest with one remote command; every word quoted by the remote shell's rules."""
        return ["ssh", "-i", self.key, *sum((["-o", o] for o in SSH_OPTIONS), []), "root@" + self.address,
                "--", " ".join(shell_quote(a) for a in argv)]

    def run(self, argv: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        return run(self.ssh_argv(argv), check=check, **kwargs)

    def zfs(self, *args: str) -> str:
        return self.run(["zfs", *args]).stdout

    def exists(self, name: str) -> bool:
        return self.run(["zfs", "list", "-H", "-o", "name", name], check=False).returncode == 0

    def answers(self) -> bool:
        return self.pid is not None and run(self.ssh_argv(["true"]), check=False, timeout=30).returncode == 0

    # -- up -------------------------------------------------------------------------------------------------
    def boot(self, image: Image, bridge: str, accel: str) -> None:
        os.makedirs(self.directory, exist_ok=True)
        overlay = self.path("root.qcow2")
        if not os.path.exists(overlay):
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", image.base, "-F", "raw", overlay])
        pool_disk = self.path("pool0.img")
        if not os.path.exists(pool_disk):
            run(["truncate", "-s", self.pool_size, pool_disk])
        if not link_exists(self.tap):
            run(["ip", "tuntap", "add", "dev", self.tap, "mode", "tap"])
        run(["ip", "link", "set", self.tap, "master", bridge])
        run(["ip", "link", "set", self.tap, "up"])
        with open(self.key + ".pub") as handle:
            key = handle.read().split()[1]
        append = " ".join(["root=LABEL=" + ROOT_LABEL, "rw", "console=ttyS0", "net.ifnames=0", "quiet",
                           "panic=-1", "vmbackup.hostname=" + self.name, "vmbackup.addr=%s/24" % self.address,
                           "vmbackup.key=" + key])
        mac = "52:54:00:%02x:%02x:%02x" % (zlib.crc32(self.prefix.encode()) & 0xff, int(self.subnet.split(".")[2]),
                                          self.number)
        if os.path.exists(self.path("console.log")):
            os.replace(self.path("console.log"), self.path("console.previous.log"))
        argv = ["qemu-system-x86_64", "-name", self.name, "-machine", "q35", "-accel", accel, "-cpu", "max",
                "-m", str(self.memory_mb), "-smp", "2", "-display", "none", "-vga", "none", "-no-reboot",
                "-kernel", image.kernel, "-initrd", image.initrd, "-append", append,
                "-drive", "file=%s,if=none,id=root,format=qcow2,discard=unmap" % overlay,
                "-device", "virtio-blk-pci,drive=root",
                "-drive", "file=%s,if=none,id=pool0,format=raw,cache=writeback,discard=unmap" % pool_disk,
                "-device", "virtio-blk-pci,drive=pool0,serial=pool0",
                *sum((["-drive", "file=%s,if=none,id=data%d,format=raw,cache=writeback" % (path, n),
                       "-device", "virtio-blk-pci,drive=data%d,serial=data%d" % (n, n)]
                      for n, path in enumerate(self.drives)), []),
                "-netdev", "tap,id=lab,ifname=%s,script=no,downscript=no" % self.tap,
                "-device", "virtio-net-pci,netdev=lab,mac=" + mac,
                "-chardev", "socket,id=qga0,path=%s,server=on,wait=off" % self.qga_socket,
                "-device", "virtio-serial-pci", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
                "-serial", "file:" + self.path("console.log"), "-monitor", "none",
                "-pidfile", self.path("qemu.pid"), "-daemonize"]
        proc = run(argv, check=False)
        if proc.returncode != 0:
            raise RuntimeError("%s: qemu (-accel %s) did not start: %s" % (self.name, accel, proc.stderr.strip()))

    def wait_ready(self, timeout: float) -> float:
        """Until the guest answers ssh; a panic or an initramfs shell on its console ends the wait with what it
        printed."""
        started = time.monotonic()
        while True:
            if self.answers():
                return time.monotonic() - started
            console = self.console()
            for sign in ("Kernel panic", "Dropping to a shell", "end Kernel panic", "Give root password"):
                if sign in console:
                    raise RuntimeError("%s did not boot (%r on its console):\n%s"
                                       % (self.name, sign, tail(console, 40)))
            if self.pid is None:
                raise RuntimeError("%s: qemu ended while booting; its console:\n%s" % (self.name, tail(console, 40)))
            if time.monotonic() - started > timeout:
                raise RuntimeError("%s did not answer ssh on %s within %d s; its console:\n%s"
                                   % (self.name, self.address, timeout, tail(console, 40)))
            time.sleep(2)

    def console(self) -> str:
        try:
            with open(self.path("console.log"), errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def prepare(self) -> None:
        """The ZFS module loaded and the pool imported or made on the virtio disk `pool0`."""
        self.run(["modprobe", "zfs"])
        for pool in self.pools:
            if self.run(["zpool", "list", "-H", pool], check=False).returncode == 0:
                continue
            if self.run(["zpool", "import", "-f", pool], check=False).returncode == 0:
                continue
            say("%s: creating pool %s on its virtio disk pool0" % (self.name, pool))
            self.run(["zpool", "create", "-f", "-o", "ashift=12", "-O", "compression=lz4", pool,
                      "/dev/disk/by-id/virtio-pool0"])

    def down(self) -> None:
        pid = self.pid
        if pid:
            # An orderly power-off keeps the pool clean; kill if the guest does not end in time.
            self.run(["systemctl", "poweroff"], check=False, timeout=30)
            if not labmod.stop_pid(pid, 0, 30):
                labmod.stop_pid(pid, signal.SIGKILL, 10)
        if link_exists(self.tap):
            run(["ip", "link", "del", self.tap], check=False)

    # -- faults ---------------------------------------------------------------------------------------------
    def link(self, up: bool) -> None:
        """Set the guest's tap up or down (from the host side, as a pulled cable)."""
        set_link(self.tap, up)

    def link_is_up(self) -> bool:
        return link_is_up(self.tap)

    # -- VMs ------------------------------------------------------------------------------------------------
    def create_vm(self, vm: LabVM, data_mb: int = 16) -> list[str]:
        """The VM's disks as zvols `<pool>/<uuid>-disk<N>` of `vm.size_mb`, with the vmbackup:* properties, the
        first `data_mb` MiB random."""
        made = []
        for n in range(vm.disks):
            disk = vm.disk(self.pools[0], n)
            if self.exists(disk):
                continue
            say("%s: creating VM disk %s (zvol, %d MiB, %s)" % (self.name, disk, vm.size_mb, vm.hostname))
            self.run(["zfs", "create", "-V", "%dM" % vm.size_mb, "-o", "vmbackup:hostname=" + vm.hostname,
                      "-o", "vmbackup:brand=" + vm.brand, "-o", "vmbackup:state=" + vm.state, disk])
            self.run(["udevadm", "settle"])
            self.write_data(disk, "data", data_mb, offset_mb=0)
            made.append(disk)
        return made

    def forget(self, uuids: list[str]) -> None:
        """Everything the guest holds of these VMs taken away: their datasets (disks, backups, restores; the
        holds on their snapshots released first) and their files. A test suite's VMs add up to more than a
        guest's pool holds (a thick zvol reserves its whole size, and each snapshot of it pins what it
        referenced), so the tests forget each test's VMs after it."""
        script = r"""pool=$1; shift
for vm in "$@"; do
  zfs list -H -o name -t snapshot -r "$pool" | grep -F -- "$vm" | while read -r snap; do
    zfs holds -H "$snap" | while IFS="$(printf '\t')" read -r _ tag _; do zfs release "$tag" "$snap"; done
  done
  zfs list -H -o name -t filesystem,volume -r "$pool" | grep -F -- "$vm" | while read -r name; do
    for try in 1 2 3 4 5; do  # a zvol is busy for a moment after udev or dd used it
      ! zfs list "$name" >/dev/null 2>&1 || zfs destroy -r "$name" && break
      sleep 1
    done
  done
  find "$(zfs get -H -o value mountpoint "$pool")" -path "*$vm*" -prune -exec rm -rf {} +
done
! zfs list -H -o name -t all -r "$pool" | grep -F "$(printf '%s\n' "$@")"
"""
        for vm in uuids:
            if not UUID_RE.fullmatch(vm):
                raise ValueError("not a VM's uuid: %r" % vm)
        if uuids:
            self.run(["sh", "-c", script, "sh", self.pools[0], *uuids])

    def device(self, volume: str) -> str:
        return "/dev/zvol/" + volume

    def write_data(self, volume: str, name: str, mib: int, offset_mb: int | None = None) -> str:
        """`mib` MiB of random data into the zvol, at `offset_mb` (default: a place that `name` picks, past the
        first data)."""
        size_mb = int(self.zfs("get", "-Hp", "-o", "value", "volsize", volume)) // 2**20
        if offset_mb is None:
            offset_mb = zlib.crc32(name.encode()) % max(1, size_mb - mib)
        device = self.device(volume)
        self.run(["dd", "if=/dev/urandom", "of=" + device, "bs=1M", "count=%d" % mib, "seek=%d" % offset_mb,
                  "conv=fsync,notrunc", "status=none"])
        return device

    def checksums(self, volume: str) -> dict[str, str]:
        """sha256 of the zvol's whole device, by device path (the same shape as netlab's file checksums)."""
        device = self.device(volume)
        self.run(["udevadm", "settle"])
        return {device: self.run(["sha256sum", device]).stdout.split()[0]}

    def status(self) -> str:
        if not self.pid:
            return "%s (%s, %s): down" % (self.name, self.role, self.address)
        answers = self.answers()
        lines = ["%s (%s, %s): qemu pid %d, link %s, ssh %s" % (
            self.name, self.role, self.address, self.pid, "up" if self.link_is_up() else "DOWN",
            "answers" if answers else "DOES NOT ANSWER")]
        if answers:
            version = self.run(["zfs", "version"], check=False).stdout.split()
            lines.append("  " + " ".join(version[:1]))
            out = self.run(["zfs", "list", "-H", "-r", "-o", "name,type,used", *self.pools], check=False).stdout
            lines += ["  " + line for line in out.splitlines()]
        return "\n".join(lines)


def probe_kvm(image: Image, directory: str, timeout: float = 15) -> str | None:
    """None if KVM boots the image's kernel (it prints its banner on the serial console), else why not."""
    console = os.path.join(directory, "kvm-probe.log")
    with open(console + ".err", "w") as errors:
        proc = subprocess.Popen(["qemu-system-x86_64", "-accel", "kvm", "-cpu", "max", "-m", "256", "-display",
                                 "none", "-vga", "none", "-no-reboot", "-kernel", image.kernel, "-append",
                                 "console=ttyS0 panic=-1", "-serial", "file:" + console, "-monitor", "none"],
                                stdin=subprocess.DEVNULL, stdout=errors, stderr=errors)
    deadline = time.monotonic() + timeout
    why = "no console output within %d s" % timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            with open(console + ".err", errors="replace") as handle:
                said = handle.read()
            for sign in ("KVM internal error", "failed to set MSR", "Could not access KVM", "failed to initialize"):
                if sign in said:
                    return "%s: %s" % ("qemu", next(line for line in said.splitlines() if sign in line).strip())
            if "Linux version" in (open(console, errors="replace").read() if os.path.exists(console) else ""):
                return None
            time.sleep(0.3)
        if proc.poll() is not None:
            why = "qemu ended (rc=%s)" % proc.returncode
        return why
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def shell_quote(word: str) -> str:
    if word and all(c.isalnum() or c in "@%+=:,./-_" for c in word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


@dataclasses.dataclass
class OpenZfsLab(BridgeLab):
    """Guests on a bridge `<prefix>br` holding `<subnet>.1`; guests at `.2`, `.3`, ..."""

    directory: str = os.environ.get("VMBACKUP_OZLAB_DIR", "/var/tmp/vmbackup-ozlab")
    prefix: str = "vboz"
    subnet: str = "10.79.0"
    nodes: list[tuple[str, str]] = dataclasses.field(
        default_factory=lambda: [("oz-compute", "compute"), ("oz-backup", "backup")])
    pool: str = "zones"
    pool_size: str = "2G"
    memory_mb: int = 1536
    accel: str = "auto"  # auto (KVM if it runs a guest, else TCG), kvm or tcg
    cache: str = CACHE
    # Raw files attached to a guest (by name) as virtio disks with serials data0, data1, ...: a tenant's disk.
    drives: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.prefix.isalnum() and len(self.prefix) <= 10):
            raise RuntimeError("prefix %r: at most 10 letters or digits" % self.prefix)
        if self.accel not in ("auto", "kvm", "tcg"):
            raise RuntimeError("accel %r: auto, kvm or tcg" % self.accel)

    @classmethod
    def load(cls, directory: str, **defaults) -> OpenZfsLab:
        """The lab `up` made in `directory` (its settings are kept there), else one with `defaults`."""
        try:
            with open(os.path.join(directory, "ozlab.json")) as handle:
                saved = json.load(handle)
        except OSError:
            return cls(directory=directory, **defaults)
        saved["nodes"] = [tuple(pair) for pair in saved["nodes"]]
        saved.pop("ran_with", None)
        return cls(directory=directory, **saved)

    def save(self, ran_with: str | None = None) -> None:
        settings = {"prefix": self.prefix, "subnet": self.subnet, "nodes": self.nodes, "pool": self.pool,
                    "pool_size": self.pool_size, "memory_mb": self.memory_mb, "accel": self.accel,
                    "cache": self.cache, "drives": self.drives}
        if ran_with:
            settings["ran_with"] = ran_with
        with open(os.path.join(self.directory, "ozlab.json"), "w") as handle:
            json.dump(settings, handle, indent=1)

    @property
    def ran_with(self) -> str | None:
        try:
            with open(os.path.join(self.directory, "ozlab.json")) as handle:
                return json.load(handle).get("ran_with")
        except OSError:
            return None

    def node_list(self) -> list[Guest]:
        return [Guest(name, role, n + 2, os.path.join(self.directory, "nodes", name), self.prefix, self.subnet,
                      [self.pool], self.key, self.pool_size, self.memory_mb, list(self.drives.get(name, [])))
                for n, (name, role) in enumerate(self.nodes)]

    def up(self, vms: list[LabVM] | None = None, data_mb: int = 16, boot_timeout: float = 600) -> None:
        """Image (built once), bridge, key, every guest booted and ready, pools, the default VMs on the first
        compute guest, the inventory. Idempotent: running guests are kept."""
        image = ensure_image(self.cache)
        os.makedirs(self.directory, exist_ok=True)
        ensure_bridge(self.bridge, self.subnet)
        if not os.path.exists(self.key):
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vmbackup-ozlab", "-f", self.key])
        nodes = self.node_list()
        accel = self.ran_with
        started = time.monotonic()
        booted = []
        for node in nodes:
            if node.pid:
                continue
            if accel is None:
                accel = self.pick_accel(image)
            node.boot(image, self.bridge, accel)
            booted.append(node)
        self.save(ran_with=accel)
        for node in booted:
            node.wait_ready(boot_timeout)
        if booted:
            say("%s ssh-ready in %d s under %s" % (", ".join(n.name for n in booted), time.monotonic() - started,
                                                   "KVM" if accel == "kvm" else "TCG (software emulation)"))
        for node in nodes:
            node.prepare()
        computes = [n for n in nodes if n.role == "compute"]
        for vm in DEFAULT_VMS if vms is None else vms:
            if computes:
                computes[0].create_vm(vm, data_mb)
        self.write_inventory()

    def pick_accel(self, image: Image) -> str:
        """KVM when asked, or when `auto` and a probe boots this kernel under it; else TCG. The probe runs the
        kernel alone for up to 15 s: a KVM that cannot run it (here: a paravirtual KVM) says "KVM internal
        error" or "failed to set MSR" at once and stops the guest."""
        if self.accel == "tcg":
            return "tcg,thread=multi"
        why = "/dev/kvm cannot be opened"
        if os.access("/dev/kvm", os.R_OK | os.W_OK):
            why = probe_kvm(image, self.directory)
            if why is None:
                say("KVM runs the guest kernel: guests boot under KVM")
                return "kvm"
        if self.accel == "kvm":
            raise RuntimeError("KVM was asked for and does not run this guest: %s" % why)
        say("KVM does not run this guest (%s): software emulation (TCG) instead" % why)
        return "tcg,thread=multi"

    def write_inventory(self) -> str:
        """groups compute and backup, reached by address and ssh only; the backup nodes pull over ssh."""
        # One ssh connection per peer, reused by the modules' commands: an ssh handshake costs the emulated
        # guests seconds, and a backup runs about ten commands on its compute node. The master never expires
        # while idle (ControlPersist=yes): one that expires races the client that reaches it as it exits ("session
        # request failed"); a master whose link is cut ends by ServerAlive, and clients then connect anew.
        peer = {"vmbackup_ssh_user": "root", "vmbackup_ssh_port": 22, "vmbackup_ssh_key": "/root/.ssh/id_lab",
                "vmbackup_ssh_options": list(SSH_OPTIONS) + ["ControlMaster=auto", "ControlPersist=yes",
                                                              "ControlPath=/root/.ssh/vmbackup-%C"]}
        self.share_key()
        return write_ssh_inventory(self.inventory, "vmbackup-lab ozlab up", self.node_list(), self.pool, self.key,
                                   SSH_OPTIONS, peer, timeout=30)

    def share_key(self) -> None:
        """Backup guests pull from compute guests over ssh: each guest holds the lab's key as
        /root/.ssh/id_lab."""
        with open(self.key) as handle:
            private = handle.read()
        for node in self.node_list():
            if node.pid:
                run(node.ssh_argv(["sh", "-c", "umask 077; mkdir -p /root/.ssh; cat > /root/.ssh/id_lab"]),
                    input=private)

    def down(self) -> None:
        """Stop every guest, remove taps, bridge and the lab's folder (the image cache stays)."""
        for node in self.node_list():
            if node.pid:
                say("%s: stopping" % node.name)
            node.down()
        remove_bridge(self.bridge)
        shutil.rmtree(self.directory, ignore_errors=True)

    def status(self) -> str:
        lines = ["bridge %s: %s" % (self.bridge, "present" if link_exists(self.bridge) else "absent"),
                 "accelerator: %s" % (self.ran_with or "not started"),
                 "inventory: %s" % (self.inventory if os.path.exists(self.inventory) else "not written")]
        return "\n".join(lines + [node.status() for node in self.node_list()])


DEFAULT_VMS = [LabVM("3c8e6a51-2f4d-4e7b-9c1a-6d5b4e3f2a10", "oz-web01.lab", disks=1, size_mb=64)]
