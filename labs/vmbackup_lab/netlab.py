"""A lab of separate nodes: each in its own network and mount namespace, with its own zfs-fuse and sshd.

Where `lab.Lab` plays every node with one zfs-fuse on this machine, a node here is reached by address and
ssh only, holds pools that may share names with other nodes' pools, and can be cut off (its veth set down)
or lose its ZFS daemon on its own: what the fault tests need.

Per node, under `<directory>/<name>/`:
  a network namespace `<prefix>-<name>` with `eth0` (address `<subnet>.<n>`), its peer `<prefix>v<n>`
  on the bridge `<prefix>br` in this namespace (which holds `<subnet>.1`);
  a holder process (`sleep infinity` in a private mount namespace, `holder.pid`) that commands enter
  with `nsenter -t <pid> -m -n`;
  zfs-fuse's own paths bind-mounted from folders here: `/var/run/zfs` (its control socket `zfs_socket`,
  which the zfs and zpool commands talk to), `/var/lib/zfs` (`zpool.cache`, read at start to import
  pools), `/etc/zfs` (`zfsrc`) and `/var/lock/zfs` (`zfs_lock`, which lets one daemon run per machine);
  an sshd on `<address>:22`, key only, accepting the lab's key (`<directory>/id_ed25519`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time

import yaml

from vmbackup_lab import lab as labmod
from vmbackup_lab.lab import ZFS_PRIVATE_PATHS, LabVM, pid_alive, read_pid, say

SSH_OPTIONS = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "LogLevel=ERROR",
               # A dead link fails a transfer within seconds instead of hanging until TCP gives up.
               "ServerAliveInterval=2", "ServerAliveCountMax=2", "ConnectTimeout=5", "BatchMode=yes"]
APT_PACKAGES = ["iproute2", "util-linux"]


def link_exists(name: str) -> bool:
    return labmod.run(["ip", "link", "show", name], check=False).returncode == 0


def set_link(name: str, up: bool) -> None:
    """Set a node's host-side link up or down (as a pulled cable)."""
    labmod.run(["ip", "link", "set", name, "up" if up else "down"])


def link_is_up(name: str) -> bool:
    out = labmod.run(["ip", "-o", "link", "show", name], check=False).stdout
    flags = out.split("<", 1)[1].split(">", 1)[0].split(",") if "<" in out else []
    return "UP" in flags


def ensure_bridge(bridge: str, subnet: str) -> None:
    """A lab's bridge, up, holding `<subnet>.1/24`."""
    if not link_exists(bridge):
        say("bridge %s with %s.1/24" % (bridge, subnet))
        labmod.run(["ip", "link", "add", bridge, "type", "bridge"])
    if " %s.1/" % subnet not in labmod.run(["ip", "-o", "addr", "show", "dev", bridge]).stdout:
        labmod.run(["ip", "addr", "add", subnet + ".1/24", "dev", bridge])
    labmod.run(["ip", "link", "set", bridge, "up"])


def remove_bridge(bridge: str) -> None:
    if link_exists(bridge):
        say("removing bridge %s" % bridge)
        labmod.run(["ip", "link", "del", bridge], check=False)


def write_ssh_inventory(path: str, written_by: str, nodes: list, pool: str, key: str, options: list[str],
                        peer_ssh: dict, timeout: int) -> str:
    """An inventory of a lab's nodes (name, role, address) in groups compute and backup, reached by address and
    ssh only with `key` and `options`; compute nodes carry `peer_ssh`, how the backup nodes pull from them."""
    groups: dict = {"compute": {"hosts": {}}, "backup": {"hosts": {}}}
    for node in nodes:
        host = {"ansible_host": node.address}
        if node.role == "compute":
            host.update(vmbackup_pool=pool, vmbackup_pools=[pool], vmbackup_backend="zfs",
                        vmbackup_ssh_host=node.address, **peer_ssh)
        else:
            host.update(vmbackup_zpool=pool)
        groups[node.role]["hosts"][node.name] = host
    inventory = {"all": {
        "vars": {"ansible_connection": "ssh", "ansible_user": "root", "ansible_port": 22,
                 "ansible_ssh_private_key_file": key,
                 "ansible_ssh_common_args": " ".join("-o " + o for o in options),
                 "ansible_ssh_timeout": timeout,
                 "ansible_python_interpreter": "/usr/bin/python3"},
        "children": groups}}
    with open(path + ".tmp", "w") as handle:
        handle.write("# Written by `%s`: nodes reached by address and ssh.\n" % written_by)
        yaml.safe_dump(inventory, handle, sort_keys=False)
    os.replace(path + ".tmp", path)
    return path


@dataclasses.dataclass
class NetNode:
    """One node: its namespaces, its zfs-fuse, its sshd and its pools."""

    name: str
    role: str  # compute or backup
    number: int  # the last byte of its address; also names its veth
    directory: str
    prefix: str
    subnet: str
    pools: list[str]
    pool_size: str = "1G"

    @property
    def address(self) -> str:
        return "%s.%d" % (self.subnet, self.number)

    @property
    def netns(self) -> str:
        return "%s-%s" % (self.prefix, self.name)

    @property
    def veth(self) -> str:
        """The host side of the node's link: set it down to cut the node off."""
        return "%sv%d" % (self.prefix, self.number)

    def path(self, *parts: str) -> str:
        return os.path.join(self.directory, *parts)

    @property
    def holder(self) -> int | None:
        pid = read_pid(self.path("holder.pid"), "sleep")
        if not pid_alive(pid):
            return None
        # A pid reused by another process is not our holder: it must be in the node's network namespace.
        try:
            if os.stat("/proc/%d/ns/net" % pid).st_ino != os.stat("/run/netns/" + self.netns).st_ino:
                return None
        except OSError:
            return None
        return pid

    # -- commands inside the node -------------------------------------------------------------
    def argv(self, argv: list[str]) -> list[str]:
        pid = self.holder
        if pid is None:
            raise RuntimeError("node %s is not up (no namespace holder)" % self.name)
        return ["nsenter", "-t", str(pid), "-m", "-n", *argv]

    def run(self, argv: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run a command in the node's namespaces (its zfs and zpool reach its own daemon only)."""
        return labmod.run(self.argv(argv), check=check, **kwargs)

    def zfs(self, *args: str) -> str:
        return self.run(["zfs", *args]).stdout

    def exists(self, name: str) -> bool:
        return self.run(["zfs", "list", "-H", "-o", "name", name], check=False).returncode == 0

    # -- up -----------------------------------------------------------------------------------
    def up(self, bridge: str, key_pub: str, host_key: str) -> None:
        for folder in ("pools", "mnt", *ZFS_PRIVATE_PATHS):
            os.makedirs(self.path(folder), exist_ok=True)
        if not os.path.exists(self.path("etc", "zfsrc")) and os.path.exists("/etc/zfs/zfsrc"):
            shutil.copy("/etc/zfs/zfsrc", self.path("etc", "zfsrc"))
        self.ensure_network(bridge)
        self.ensure_holder()
        self.start_zfs()
        for pool in self.pools:
            self.ensure_pool(pool)
        self.ensure_sshd(key_pub, host_key)

    def ensure_network(self, bridge: str) -> None:
        if not os.path.exists("/run/netns/" + self.netns):
            say("%s: network namespace %s" % (self.name, self.netns))
            labmod.run(["ip", "netns", "add", self.netns])
        inside = ["ip", "-n", self.netns]
        if not link_exists(self.veth):
            say("%s: link %s <-> %s eth0 at %s" % (self.name, self.veth, self.netns, self.address))
            labmod.run(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns",
                        self.netns])
        labmod.run(["ip", "link", "set", self.veth, "master", bridge])
        labmod.run(["ip", "link", "set", self.veth, "up"])
        labmod.run(inside + ["link", "set", "lo", "up"])
        addresses = labmod.run(inside + ["-o", "addr", "show", "dev", "eth0"]).stdout
        if " %s/" % self.address not in addresses:
            labmod.run(inside + ["addr", "add", self.address + "/24", "dev", "eth0"])
        labmod.run(inside + ["link", "set", "eth0", "up"])

    def ensure_holder(self) -> None:
        if self.holder:
            return
        proc = subprocess.Popen(["nsenter", "--net=/run/netns/" + self.netns, "unshare", "--mount",
                                 "--propagation", "private", "sleep", "infinity"],
                                start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # nsenter and unshare exec (no fork), so the pid is the sleep's; wait until it is in its namespaces.
        deadline = time.monotonic() + 10
        while True:
            try:
                if os.stat("/proc/%d/ns/mnt" % proc.pid).st_ino != os.stat("/proc/self/ns/mnt").st_ino:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("%s: the namespace holder did not start" % self.name)
            time.sleep(0.05)
        with open(self.path("holder.pid"), "w") as handle:
            handle.write("%d\n" % proc.pid)
        for folder, target in ZFS_PRIVATE_PATHS.items():
            os.makedirs(target, exist_ok=True)
            self.run(["mount", "--bind", self.path(folder), target])

    def zfs_running(self) -> bool:
        return self.holder is not None and self.run(["zpool", "list", "-H"], check=False).returncode == 0

    def start_zfs(self, timeout: float = 30) -> None:
        """Start the node's zfs-fuse if it does not answer; it imports the pools in its zpool.cache."""
        if self.zfs_running():
            return
        say("%s: starting zfs-fuse" % self.name)
        self.unmount_stale()
        labmod.launch_zfs_fuse(lambda argv: self.run(argv + ["--no-kstat-mount"], check=False), self.zfs_running,
                               self.path("zfs-fuse.pid"), name=self.name, timeout=timeout)
        # As zfs-fuse's init script does: the imported pools' filesystems are mounted by `zfs mount -a`.
        self.run(["zfs", "mount", "-a"], check=False)

    def kill_zfs(self, sig: int = signal.SIGKILL) -> None:
        """Kill the node's zfs-fuse (a crash when SIGKILL)."""
        labmod.stop_pid(read_pid(self.path("zfs-fuse.pid"), "zfs-fuse"), sig)

    def unmount_stale(self) -> None:
        """Lazily unmount the FUSE mounts a dead zfs-fuse left in the node's mount namespace."""
        pid = self.holder
        with open("/proc/%d/mounts" % pid) as handle:
            mounts = [line.split()[1] for line in handle if line.split()[2].startswith("fuse")]
        for mount in reversed(mounts):
            self.run(["umount", "-l", mount.encode().decode("unicode_escape")], check=False)

    def ensure_pool(self, pool: str) -> None:
        if self.run(["zpool", "list", "-H", pool], check=False).returncode == 0:
            return
        image = self.path("pools", pool + ".img")
        if os.path.exists(image):
            say("%s: importing pool %s" % (self.name, pool))
            self.run(["zpool", "import", "-d", self.path("pools"), pool])
            return
        say("%s: creating pool %s (%s)" % (self.name, pool, self.pool_size))
        labmod.run(["truncate", "-s", self.pool_size, image])
        os.makedirs(self.path("mnt", pool), exist_ok=True)
        self.run(["zpool", "create", "-m", self.path("mnt", pool), pool, image])

    def ssh_answers(self, key: str) -> bool:
        argv = ["ssh", "-i", key, *sum((["-o", o] for o in SSH_OPTIONS), []), "root@" + self.address, "true"]
        return labmod.run(argv, check=False).returncode == 0

    def ensure_sshd(self, key_pub: str, host_key: str) -> None:
        if pid_alive(read_pid(self.path("sshd.pid"), "sshd")):
            return
        config = self.path("sshd_config")
        with open(config, "w") as handle:
            handle.write("\n".join([
                "ListenAddress %s" % self.address, "Port 22", "HostKey %s" % host_key,
                "PidFile %s" % self.path("sshd.pid"), "AuthorizedKeysFile %s" % key_pub,
                "PermitRootLogin prohibit-password", "PubkeyAuthentication yes", "PasswordAuthentication no",
                "KbdInteractiveAuthentication no", "UsePAM no",
                # The lab folder may live below the world-writable /var/tmp.
                "StrictModes no",
                "MaxStartups 100", "MaxSessions 100", "Subsystem sftp internal-sftp", "AcceptEnv LANG LC_*",
                # The node notices a dead peer too, so that its `zfs send` ends instead of hanging.
                "ClientAliveInterval 3", "ClientAliveCountMax 3", ""]))
        say("%s: starting sshd on %s:22" % (self.name, self.address))
        os.makedirs("/run/sshd", exist_ok=True)
        self.run(["/usr/sbin/sshd", "-f", config, "-E", self.path("sshd.log")])

    # -- down ---------------------------------------------------------------------------------
    def down(self) -> None:
        if self.holder and self.zfs_running():
            for pool in self.pools:
                if self.run(["zpool", "list", "-H", pool], check=False).returncode == 0:
                    say("%s: destroying pool %s" % (self.name, pool))
                    self.run(["zpool", "destroy", "-f", pool], check=False)
        for pidfile, program in (("sshd.pid", "sshd"), ("zfs-fuse.pid", "zfs-fuse"), ("holder.pid", "sleep")):
            pid = read_pid(self.path(pidfile), program)
            if not labmod.stop_pid(pid, signal.SIGTERM if program == "zfs-fuse" else signal.SIGKILL, 15):
                os.kill(pid, signal.SIGKILL)
        if link_exists(self.veth):
            labmod.run(["ip", "link", "del", self.veth], check=False)
        if os.path.exists("/run/netns/" + self.netns):
            say("%s: removing network namespace %s" % (self.name, self.netns))
            labmod.run(["ip", "netns", "del", self.netns], check=False)
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- faults -------------------------------------------------------------------------------
    def link(self, up: bool) -> None:
        """Set the node's link up or down (from the host side, as a pulled cable)."""
        set_link(self.veth, up)

    def link_is_up(self) -> bool:
        return link_is_up(self.veth)

    # -- VMs ----------------------------------------------------------------------------------
    def create_vm(self, vm: LabVM, data_mb: int = 16) -> list[str]:
        """The VM's disks `<pool>/<uuid>-disk<N>` with their vmbackup:* properties and random data."""
        made = []
        for n in range(vm.disks):
            disk = vm.disk(self.pools[0], n)
            if self.exists(disk):
                continue
            say("%s: creating VM disk %s (%s)" % (self.name, disk, vm.hostname))
            self.run(["zfs", "create", "-o", "quota=%dM" % vm.size_mb, "-o", "vmbackup:hostname=" + vm.hostname,
                      "-o", "vmbackup:brand=" + vm.brand, "-o", "vmbackup:state=" + vm.state, disk])
            self.write_data(disk, "data.bin", data_mb)
            made.append(disk)
        return made

    def mountpoint(self, dataset: str) -> str:
        return self.zfs("get", "-H", "-o", "value", "mountpoint", dataset).strip()

    def write_data(self, dataset: str, name: str, mib: int) -> str:
        path = os.path.join(self.mountpoint(dataset), name)
        self.run(["dd", "if=/dev/urandom", "of=" + path, "bs=1M", "count=%d" % mib, "conv=fsync", "status=none"])
        return path

    def checksums(self, dataset: str) -> dict[str, str]:
        """sha256 of every file in a mounted filesystem of the node, by path relative to its mountpoint."""
        root = self.mountpoint(dataset)
        out = self.run(["find", root, "-type", "f", "-exec", "sha256sum", "{}", "+"]).stdout
        return {os.path.relpath(line.split("  ", 1)[1], root): line.split()[0] for line in out.splitlines()}

    def status(self) -> str:
        if not self.holder:
            return "%s (%s, %s): down" % (self.name, self.role, self.address)
        lines = ["%s (%s, %s): link %s, zfs-fuse %s, sshd %s" % (
            self.name, self.role, self.address, "up" if self.link_is_up() else "DOWN",
            "answers" if self.zfs_running() else "DOES NOT ANSWER",
            "running" if pid_alive(read_pid(self.path("sshd.pid"), "sshd")) else "NOT RUNNING")]
        if self.zfs_running():
            out = self.run(["zfs", "list", "-H", "-r", "-o", "name,used", *self.pools], check=False).stdout
            lines += ["  " + line for line in out.splitlines()]
        return "\n".join(lines)


def parse_nodes(specs: list[str]) -> list[tuple[str, str]]:
    """`ROLE:NAME` items (role compute or backup) into (name, role) pairs."""
    nodes = []
    for spec in specs:
        role, _, name = spec.partition(":")
        if role not in ("compute", "backup") or not name or not name.replace("-", "").isalnum():
            raise RuntimeError("--node %s: say ROLE:NAME, ROLE compute or backup, NAME letters, digits, -" % spec)
        nodes.append((name, role))
    return nodes


class BridgeLab:
    """What a lab of nodes on a bridge has in common (NetLab here, OpenZfsLab in ozlab.py): where its bridge, key
    and inventory are, and its nodes by name or role. A subclass has `prefix`, `directory` and `node_list()`."""

    @property
    def bridge(self) -> str:
        return self.prefix + "br"

    @property
    def key(self) -> str:
        return os.path.join(self.directory, "id_ed25519")

    @property
    def inventory(self) -> str:
        return os.path.join(self.directory, "hosts.yml")

    def node(self, name_or_role: str):
        """A node by name, or the first node of a role."""
        for node in self.node_list():
            if name_or_role in (node.name, node.role):
                return node
        raise KeyError(name_or_role)


@dataclasses.dataclass
class NetLab(BridgeLab):
    """Nodes in namespaces on a bridge `<prefix>br` holding `<subnet>.1`; nodes at `.2`, `.3`, ..."""

    directory: str = os.environ.get("VMBACKUP_NETLAB_DIR", "/var/tmp/vmbackup-netlab")
    prefix: str = "vbnl"
    subnet: str = "10.77.0"
    nodes: list[tuple[str, str]] = dataclasses.field(
        default_factory=lambda: [("netlab-compute", "compute"), ("netlab-backup", "backup")])
    pool: str = "zones"
    pool_size: str = "1G"

    def __post_init__(self) -> None:
        # Interface names have at most 15 characters: `<prefix>br`, `<prefix>v<n>`.
        if not (self.prefix.isalnum() and len(self.prefix) <= 10):
            raise RuntimeError("prefix %r: at most 10 letters or digits" % self.prefix)
        if len(self.nodes) > 250:
            raise RuntimeError("at most 250 nodes")

    @classmethod
    def load(cls, directory: str, **defaults) -> NetLab:
        """The lab `up` made in `directory` (its settings are kept there), else one with `defaults`."""
        try:
            with open(os.path.join(directory, "netlab.json")) as handle:
                saved = json.load(handle)
        except OSError:
            return cls(directory=directory, **defaults)
        saved["nodes"] = [tuple(pair) for pair in saved["nodes"]]
        return cls(directory=directory, **saved)

    def save(self) -> None:
        settings = {"prefix": self.prefix, "subnet": self.subnet, "nodes": self.nodes, "pool": self.pool,
                    "pool_size": self.pool_size}
        with open(os.path.join(self.directory, "netlab.json"), "w") as handle:
            json.dump(settings, handle, indent=1)

    def node_list(self) -> list[NetNode]:
        return [NetNode(name, role, n + 2, os.path.join(self.directory, "nodes", name), self.prefix, self.subnet,
                        [self.pool], self.pool_size) for n, (name, role) in enumerate(self.nodes)]

    def up(self, vms: list[LabVM] | None = None, data_mb: int = 16) -> None:
        """Bridge, keys, every node, the default VMs on the first compute node, the inventory. Idempotent."""
        for tool in ("zfs-fuse", "ip", "nsenter", "unshare"):
            if not shutil.which(tool):
                labmod.install_packages(labmod.APT_PACKAGES + APT_PACKAGES)
        os.makedirs(self.directory, exist_ok=True)
        self.save()
        ensure_bridge(self.bridge, self.subnet)
        for path, comment in ((self.key, "vmbackup-netlab"), (os.path.join(self.directory, "ssh_host_ed25519_key"),
                                                              "vmbackup-netlab-host")):
            if not os.path.exists(path):
                labmod.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path])
        nodes = self.node_list()
        for node in nodes:
            node.up(self.bridge, self.key + ".pub", os.path.join(self.directory, "ssh_host_ed25519_key"))
        computes = [n for n in nodes if n.role == "compute"]
        for vm in labmod.DEFAULT_VMS if vms is None else vms:
            if computes:
                computes[0].create_vm(vm, data_mb)
        self.write_inventory()
        for node in nodes:
            deadline = time.monotonic() + 15
            while not node.ssh_answers(self.key):
                if time.monotonic() > deadline:
                    raise RuntimeError("%s: sshd on %s does not accept the lab key" % (node.name, node.address))
                time.sleep(0.3)

    def write_inventory(self) -> str:
        """groups compute and backup, reached by address and ssh only; the backup nodes pull over ssh."""
        peer = {"vmbackup_ssh_user": "root", "vmbackup_ssh_port": 22, "vmbackup_ssh_key": self.key,
                "vmbackup_ssh_options": list(SSH_OPTIONS)}
        # Ansible passes its own ConnectTimeout (10 s) ahead of the common args, and ssh keeps the first: 5.
        return write_ssh_inventory(self.inventory, "vmbackup-lab netlab up", self.node_list(), self.pool, self.key,
                                   SSH_OPTIONS, peer, timeout=5)

    def down(self) -> None:
        """Stop every node's daemons, remove namespaces, links, pools and the lab folder."""
        for node in self.node_list():
            node.down()
        remove_bridge(self.bridge)
        shutil.rmtree(self.directory, ignore_errors=True)

    def status(self) -> str:
        lines = ["bridge %s: %s" % (self.bridge, "present" if link_exists(self.bridge) else "absent"),
                 "inventory: %s" % (self.inventory if os.path.exists(self.inventory) else "not written")]
        return "\n".join(lines + [node.status() for node in self.node_list()])
