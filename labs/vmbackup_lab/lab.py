"""The local lab: zfs-fuse, file-backed pools for a compute node and a backup node, VM disks with data.

Tests, the demo and the benchmarks share it. Everything is settable so that each gets its own pools,
every step is idempotent, and `down()` removes what `up()` made.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid as uuidlib

from vmbackup.engine.runner import pid_alive

ZFS_ENV = dict(os.environ, LC_ALL="C")
APT_PACKAGES = ["zfs-fuse", "openssh-server", "openssh-client", "pv", "mbuffer", "pigz", "zstd", "lz4",
                "xz-utils", "bzip2", "sanoid"]


@dataclasses.dataclass
class LabVM:
    """A VM of the lab: its disks are `<pool>/<uuid>-disk<N>` filesystems standing in for zvols."""

    uuid: str
    hostname: str
    disks: int = 1
    brand: str = "kvm"
    state: str = "stopped"
    size_mb: int = 256

    def disk(self, pool: str, n: int) -> str:
        return "%s/%s-disk%d" % (pool, self.uuid, n)


# Fixed uuids so that the demo, the inventory and the docs can name them.
DEFAULT_VMS = [
    LabVM("9f2b1c4e-3b8a-4c1e-9a7d-2f0e5d6c7b8a", "web01.lab", disks=2),
    LabVM("5d0c7a12-8e4f-4b6a-b1c3-7e9d2a4f6b10", "db01.lab", disks=1),
]


def run(argv: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, env=ZFS_ENV, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError("%s failed (rc=%d): %s" % (" ".join(argv), proc.returncode, proc.stderr.strip()))
    return proc


def retry_busy(argv: list[str], attempts: int = 20) -> None:
    """Run a zfs/zpool command, retrying while zfs-fuse says busy (it does for a moment after I/O)."""
    for attempt in range(attempts):
        proc = run(argv, check=False)
        if proc.returncode == 0:
            return
        if "busy" not in proc.stderr or attempt == attempts - 1:
            raise RuntimeError("%s failed (rc=%d): %s" % (" ".join(argv), proc.returncode, proc.stderr.strip()))
        time.sleep(0.5)


def say(message: str) -> None:
    print("lab: " + message, flush=True)


def install_packages(packages: list[str] = APT_PACKAGES) -> None:
    """apt-get install what is missing (the machine is Debian; we are root)."""
    missing = [p for p in packages
               if run(["dpkg-query", "-W", "-f=${Status}", p], check=False).stdout.find("install ok installed") < 0]
    if not missing:
        return
    say("installing %s" % " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def stop_pid(pid: int | None, sig: int = signal.SIGTERM, wait: float = 20.0) -> bool:
    """Send `sig` to `pid` if it is alive and wait up to `wait` seconds for it to end; whether it ended."""
    if not pid_alive(pid):
        return True
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + wait
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not pid_alive(pid)


def read_pid(path: str, program: str) -> int | None:
    """The pid in the pid file `path` while that process runs `program` (its name in /proc, which the kernel cuts
    to 15 characters), else None. A pid file outlives its process, and on a busy machine its pid soon names
    another one (pids wrap at 32768 here): trusting it once killed an OpenZFS guest in the middle of a test run."""
    try:
        with open(path) as handle:
            pid = int(handle.read().strip() or 0)
        with open("/proc/%d/comm" % pid) as handle:
            name = handle.read().strip()
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and name == program[:15] else None


# The zfs-fuse daemon this process talks to: the machine's, or one of its own after isolate_zfs().
ZFS_DAEMON = {"pidfile": "/var/run/zfs-fuse.pid", "args": []}
# Where a zfs-fuse daemon keeps its socket, cache, config and lock: private to a mount namespace, they
# let it run beside the machine's daemon (one daemon per namespace, each seeing only its own pools).
ZFS_PRIVATE_PATHS = {"run": "/var/run/zfs", "lib": "/var/lib/zfs", "etc": "/etc/zfs", "lock": "/var/lock/zfs"}
CLONE_NEWNS = 0x00020000


def zfs_daemon_running() -> bool:
    return shutil.which("zpool") is not None and run(["zpool", "list", "-H"], check=False).returncode == 0


def launch_zfs_fuse(start, answers, pidfile: str, name: str = "this machine", timeout: float = 60) -> None:
    """Start a zfs-fuse daemon with `start(argv)` until `answers()` says its pools can be listed.

    zfs-fuse tells why it stops only to syslog, which a container lacks: "pid file already exists;
    aborting" after a killed daemon, its lock still held by a dying one, a failed FUSE mount. So a stale
    pid file is removed before each try, a daemon that exits or dies is started again until `timeout`,
    and the error says what was seen.
    """
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        if os.path.exists(pidfile) and not pid_alive(read_pid(pidfile, "zfs-fuse")):
            os.unlink(pidfile)
        started = start(["zfs-fuse", "--pidfile", pidfile])
        if started.returncode != 0:
            seen.append("exit %d: %s" % (started.returncode, (started.stderr or "").strip() or "no output"))
        else:
            gone_after = time.monotonic() + 5  # its pid file appears once it has forked
            while time.monotonic() < deadline:
                if answers():
                    return
                if time.monotonic() > gone_after and not pid_alive(read_pid(pidfile, "zfs-fuse")):
                    seen.append("the daemon exited")
                    break
                time.sleep(0.3)
            else:
                seen.append("no answer from `zpool list`")
        say("%s: zfs-fuse is not up (%s)" % (name, seen[-1]))
        time.sleep(0.5)
    fuse = "present" if os.path.exists("/dev/fuse") else "missing (modprobe fuse, or give the container /dev/fuse)"
    raise RuntimeError("%s: zfs-fuse did not start within %ds (%s); /dev/fuse is %s"
                       % (name, timeout, "; ".join(dict.fromkeys(seen)), fuse))


def start_zfs_daemon(timeout: float = 60) -> None:
    """Start zfs-fuse if no ZFS answers; wait until it does."""
    if zfs_daemon_running():
        return
    if not shutil.which("zfs-fuse"):
        install_packages(["zfs-fuse"])
    if not os.path.exists("/dev/fuse"):
        run(["modprobe", "fuse"], check=False)
    say("starting zfs-fuse")
    os.makedirs("/var/run/zfs", exist_ok=True)
    launch_zfs_fuse(lambda argv: run(argv + ZFS_DAEMON["args"], check=False), zfs_daemon_running,
                    ZFS_DAEMON["pidfile"], timeout=timeout)


def isolate_zfs(directory: str) -> None:
    """Move this process (and all it starts from now on) into a mount namespace of its own, where
    start_zfs_daemon() starts a zfs-fuse daemon of its own that sees only the pools made here.

    One zfs-fuse daemon serving several processes deadlocks now and then (seen: `zfs clone` in four pools
    at once hangs within a hundred clones; two test workers creating a VM disk at once hung both), so
    each test worker gets its own. Only the calling thread moves: call it from the main thread, before
    any zfs command, so that every later thread and child starts in the new namespace.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("isolate_zfs: call it from the main thread")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS): %s" % os.strerror(ctypes.get_errno()))
    run(["mount", "--make-rprivate", "/"])
    for folder, target in ZFS_PRIVATE_PATHS.items():
        private = os.path.join(directory, "zfs-" + folder)
        os.makedirs(private, exist_ok=True)
        os.makedirs(target, exist_ok=True)
        if folder == "etc" and os.path.exists("/etc/zfs/zfsrc") and not os.path.exists(os.path.join(private, "zfsrc")):
            shutil.copy("/etc/zfs/zfsrc", private)
        run(["mount", "--bind", private, target])
    # The machine's daemon mounted its kstat tree at /zfs-kstat; this one needs none.
    ZFS_DAEMON.update(pidfile=os.path.join(directory, "zfs-fuse.pid"), args=["--no-kstat-mount"])


def stop_zfs_daemon() -> None:
    """Stop the daemon started by this process's start_zfs_daemon() after isolate_zfs()."""
    if ZFS_DAEMON["args"]:
        stop_pid(read_pid(ZFS_DAEMON["pidfile"], "zfs-fuse"))


@dataclasses.dataclass
class SshAccess:
    """How the lab's backup node reaches its compute node: ssh to this machine with a key of its own."""

    host: str
    port: int
    key: str
    user: str = "root"
    options: tuple = ("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "LogLevel=ERROR")

    def module_args(self, prefix: str) -> dict:
        """The `<prefix>_host/_port/_key/_ssh_options` options of vmbackup's modules."""
        return {prefix + "_host": self.host, prefix + "_port": self.port, prefix + "_key": self.key,
                prefix + "_user": self.user, prefix + "_ssh_options": list(self.options)}


def ensure_sshd(directory: str, port: int | None = None, host: str = "127.0.0.1") -> SshAccess:
    """Start an sshd on `port` (if none listens) that accepts a key kept in `directory`.

    The port defaults to $VMBACKUP_LAB_SSH_PORT or 2222. An sshd's sessions run in the mount namespace
    it was started in, so each isolated test worker (isolate_zfs) has its own port. Processes that
    share a port share the key and the sshd: one makes them while the others wait on a lock.
    """
    port = port or int(os.environ.get("VMBACKUP_LAB_SSH_PORT", "2222"))
    if not os.path.exists("/usr/sbin/sshd"):
        install_packages(["openssh-server", "openssh-client"])
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "sshd.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        access = SshAccess(host, port, authorize_key(os.path.join(directory, "id_ed25519")))
        probe = ["ssh", "-p", str(port), "-i", access.key, "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]
        for option in access.options:
            probe += ["-o", option]
        probe += ["root@" + host, "true"]
        if run(probe, check=False).returncode != 0:
            start_sshd(directory, host, port, probe)
    return access


def authorize_key(key: str) -> str:
    """Make the key `key` if it is missing and let it log in as this user."""
    if not os.path.exists(key):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vmbackup-lab", "-f", key])
    with open(key + ".pub") as handle:
        public = handle.read().strip()
    ssh_dir = os.path.expanduser("~/.ssh")
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    authorized = os.path.join(ssh_dir, "authorized_keys")
    known = open(authorized).read() if os.path.exists(authorized) else ""
    if public not in known:
        with open(authorized, "a") as handle:
            handle.write(("" if known.endswith("\n") or not known else "\n") + public + "\n")
        os.chmod(authorized, 0o600)
    return key


def sshd_pidfile(directory: str, port: int) -> str:
    return os.path.join(directory, "sshd-%d.pid" % port)


def stop_sshd(directory: str, port: int) -> None:
    """Stop the sshd that ensure_sshd(directory, port) started."""
    stop_pid(read_pid(sshd_pidfile(directory, port), "sshd"), wait=0)


def start_sshd(directory: str, host: str, port: int, probe: list[str]) -> None:
    say("starting sshd on %s:%d" % (host, port))
    run(["ssh-keygen", "-A"])
    os.makedirs("/run/sshd", exist_ok=True)
    run(["/usr/sbin/sshd", "-p", str(port), "-o", "ListenAddress=%s" % host,
         "-o", "PidFile=%s" % sshd_pidfile(directory, port), "-o", "PermitRootLogin=prohibit-password"])
    deadline = time.monotonic() + 15
    while run(probe, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("sshd on port %d does not accept the lab key" % port)
        time.sleep(0.3)


@dataclasses.dataclass
class Lab:
    """Pools `compute_pool` and `backup_pool` on sparse files under `directory`."""

    directory: str = os.environ.get("VMBACKUP_LAB_DIR", "/var/tmp/vmbackup-lab")
    compute_pool: str = os.environ.get("VMBACKUP_LAB_COMPUTE_POOL", "zones")
    backup_pool: str = os.environ.get("VMBACKUP_LAB_BACKUP_POOL", "backup")
    pool_size: str = os.environ.get("VMBACKUP_LAB_POOL_SIZE", "2G")

    @property
    def pools(self) -> list[str]:
        return [self.compute_pool, self.backup_pool]

    def image(self, pool: str) -> str:
        return os.path.join(self.directory, pool + ".img")

    def mountpoint(self, pool: str) -> str:
        return os.path.join(self.directory, "mnt", pool)

    def pool_exists(self, pool: str) -> bool:
        return run(["zpool", "list", "-H", "-o", "name", pool], check=False).returncode == 0

    def up(self, vms: list[LabVM] | None = None, data_mb: int = 16) -> None:
        """Install, start, create pools and VM disks; what exists already is left as it is."""
        start_zfs_daemon()
        os.makedirs(self.directory, exist_ok=True)
        for pool in self.pools:
            self.create_pool(pool)
        for vm in DEFAULT_VMS if vms is None else vms:
            self.create_vm(vm, data_mb)

    def create_pool(self, pool: str) -> None:
        if self.pool_exists(pool):
            return
        image = self.image(pool)
        if os.path.exists(image):
            say("importing pool %s from %s" % (pool, image))
            run(["zpool", "import", "-d", self.directory, pool])
            return
        say("creating pool %s (%s, %s)" % (pool, image, self.pool_size))
        run(["truncate", "-s", self.pool_size, image])
        os.makedirs(self.mountpoint(pool), exist_ok=True)
        run(["zpool", "create", "-m", self.mountpoint(pool), pool, image])

    def create_vm(self, vm: LabVM, data_mb: int = 16) -> list[str]:
        """Create the VM's disks with its properties and `data_mb` MiB of random data in each."""
        made = []
        for n in range(vm.disks):
            disk = vm.disk(self.compute_pool, n)
            if run(["zfs", "list", "-H", disk], check=False).returncode == 0:
                continue
            say("creating VM disk %s (%s)" % (disk, vm.hostname))
            run(["zfs", "create", "-o", "quota=%dM" % vm.size_mb, "-o", "vmbackup:hostname=" + vm.hostname,
                 "-o", "vmbackup:brand=" + vm.brand, "-o", "vmbackup:state=" + vm.state, disk])
            self.write_data(disk, "data.bin", data_mb)
            made.append(disk)
        return made

    def disk_path(self, dataset: str) -> str:
        return run(["zfs", "get", "-H", "-o", "value", "mountpoint", dataset]).stdout.strip()

    def write_data(self, dataset: str, name: str, mib: int) -> str:
        """Write `mib` MiB of random data into a file of a (mounted) disk dataset."""
        path = os.path.join(self.disk_path(dataset), name)
        with open(path, "wb") as handle:
            for _ in range(mib):
                handle.write(os.urandom(1 << 20))
            handle.flush()
            os.fsync(handle.fileno())
        return path

    def down(self) -> None:
        """Destroy the lab's pools and remove their files."""
        if zfs_daemon_running():
            for pool in self.pools:
                if self.pool_exists(pool):
                    say("destroying pool %s" % pool)
                    retry_busy(["zpool", "destroy", "-f", pool])
        for pool in self.pools:
            if os.path.exists(self.image(pool)):
                os.unlink(self.image(pool))
        shutil.rmtree(os.path.join(self.directory, "mnt"), ignore_errors=True)

    def status(self) -> str:
        lines = []
        for pool in self.pools:
            if self.pool_exists(pool):
                lines.append(run(["zfs", "list", "-H", "-r", "-o", "name,used,mountpoint", pool]).stdout.rstrip())
            else:
                lines.append("%s: not created" % pool)
        return "\n".join(lines)


def new_vm(hostname: str, disks: int = 1, **kwargs) -> LabVM:
    """A lab VM with a fresh uuid."""
    return LabVM(str(uuidlib.uuid4()), hostname, disks=disks, **kwargs)
