# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One ZFS vocabulary for every module: a node, its datasets and snapshots, and what its ZFS can do.

A node is the machine the module runs on, or one reached from it by ssh. Commands are argument
lists; for ssh each argument is quoted for the remote shell, so no input ever becomes shell syntax.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout


class ZfsError(Exception):
    """A zfs/zpool command failed."""

    def __init__(self, cmd: list[str], rc: int, stderr: str):
        self.cmd, self.rc, self.stderr = cmd, rc, stderr.strip()
        super().__init__("%s failed (rc=%d): %s" % (shlex.join(cmd), rc, self.stderr or "no message"))


@dataclass
class Features:
    """What the ZFS on a node supports; zfs-fuse (pool version 23) lacks most modern flags."""

    implementation: str  # "zfs-fuse", "openzfs" or "illumos"
    version: str = ""
    list_parsable: bool = False   # zfs list -p
    set_many: bool = False        # zfs set a=1 b=2 in one call
    send_compressed: bool = False  # zfs send -c
    send_estimate: bool = False   # zfs send -nP
    resume: bool = False          # zfs receive -s
    holds: bool = False
    bookmarks: bool = False


@dataclass
class Snapshot:
    """A snapshot of a dataset, with its guid (same on both sides of a send) and txg order."""

    dataset: str
    name: str
    guid: str = ""
    createtxg: int = 0
    creation: int = 0
    properties: dict = field(default_factory=dict)

    @property
    def full(self) -> str:
        return "%s@%s" % (self.dataset, self.name)


@dataclass
class SshTarget:
    """How to reach a node by ssh."""

    host: str
    user: str = "root"
    port: int = 22
    key: str | None = None
    options: list = field(default_factory=list)

    def argv(self) -> list[str]:
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", str(self.port)]
        if self.key:
            argv += ["-i", self.key]
        for option in self.options:
            argv += ["-o", option]
        return argv + ["-l", self.user, self.host, "--"]


class Node:
    """A machine with ZFS: local, or reached by ssh from the machine running the module."""

    def __init__(self, ssh: SshTarget | None = None, name: str | None = None):
        self.ssh = ssh
        self.name = name or (ssh.host if ssh else "localhost")
        self._features: Features | None = None

    @property
    def is_local(self) -> bool:
        return self.ssh is None

    def argv(self, args: list[str]) -> list[str]:
        """The argument list that runs `args` on this node, from here."""
        args = [str(a) for a in args]
        if self.is_local:
            return args
        # ssh hands the remote shell one string: quote every argument so none is read as syntax.
        return self.ssh.argv() + [shlex.join(["env", "LC_ALL=C"] + args)]

    def run(self, args: list[str], check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run a command on the node and return its output; raise ZfsError if `check` and it fails."""
        argv = self.argv(args)
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=dict(os.environ, LC_ALL="C"), timeout=timeout)
        if check and proc.returncode != 0:
            raise ZfsError(list(args), proc.returncode, proc.stderr)
        return proc

    def has_command(self, name: str) -> bool:
        if self.is_local:
            return shutil.which(name) is not None
        return self.run(["sh", "-c", 'command -v "$1"', "sh", name], check=False).returncode == 0

    # -- features -----------------------------------------------------------------------------
    @property
    def features(self) -> Features:
        if self._features is None:
            self._features = self._detect()
        return self._features

    def _detect(self) -> Features:
        version = self.run(["zfs", "version"], check=False)
        if version.returncode == 0 and "zfs-" in version.stdout:
            line = version.stdout.splitlines()[0].strip()
            return Features("openzfs", line, list_parsable=True, set_many=True, send_compressed=True,
                            send_estimate=True, resume=True, holds=True, bookmarks=True)
        uname = self.run(["uname", "-s"], check=False).stdout.strip()
        if uname == "SunOS":
            return Features("illumos", uname, list_parsable=True, set_many=True, send_compressed=True,
                            send_estimate=True, resume=True, holds=True, bookmarks=True)
        pool_version = self.run(["zpool", "upgrade", "-v"], check=False).stdout
        ver = ""
        for word in pool_version.split():
            if word.isdigit():
                ver = "pool version %s" % word
                break
        return Features("zfs-fuse", ver)

    # -- datasets -----------------------------------------------------------------------------
    def zfs(self, *args: str) -> str:
        return self.run(["zfs"] + list(args)).stdout

    def exists(self, name: str) -> bool:
        return self.run(["zfs", "list", "-H", "-o", "name", name], check=False).returncode == 0

    def get(self, names: list[str], properties: list[str]) -> dict[str, dict[str, str]]:
        """Exact (parsable) property values: {name: {property: value}}; '-' for unset user props."""
        if not names:
            return {}
        out = self.zfs("get", "-Hp", "-o", "name,property,value", ",".join(properties), *names)
        values: dict[str, dict[str, str]] = {n: {} for n in names}
        for line in out.splitlines():
            name, prop, value = line.split("\t", 2)
            values.setdefault(name, {})[prop] = value
        return values

    def get_one(self, name: str, prop: str) -> str:
        return self.get([name], [prop])[name].get(prop, "-")

    def children(self, dataset: str) -> list[str]:
        """The filesystems directly below `dataset`."""
        out = self.zfs("list", "-H", "-o", "name", "-t", "filesystem,volume", "-d", "1", dataset)
        return [n for n in out.splitlines() if n != dataset]

    def snapshots(self, dataset: str, properties: tuple[str, ...] = ()) -> list[Snapshot]:
        """The snapshots of `dataset`, oldest first (by transaction group)."""
        out = self.zfs("list", "-H", "-o", "name", "-t", "snapshot", "-d", "1", dataset)
        names = [n for n in out.splitlines() if n.startswith(dataset + "@")]
        props = ["guid", "createtxg", "creation"] + list(properties)
        values = self.get(names, props)
        snaps = []
        for full in names:
            v = values.get(full, {})
            snaps.append(Snapshot(dataset, full.split("@", 1)[1], v.get("guid", ""),
                                  int(v.get("createtxg", 0) or 0), int(v.get("creation", 0) or 0),
                                  {p: v.get(p, "-") for p in properties}))
        return sorted(snaps, key=lambda s: s.createtxg)

    def set(self, name: str, properties: dict[str, str]) -> None:
        """Set properties, one call each where the ZFS takes only one (zfs-fuse)."""
        pairs = ["%s=%s" % (k, v) for k, v in properties.items()]
        if not pairs:
            return
        if self.features.set_many:
            self.zfs("set", *pairs, name)
        else:
            for pair in pairs:
                self.zfs("set", pair, name)

    def create(self, name: str, properties: dict[str, str] | None = None, parents: bool = True) -> None:
        args = ["create"] + (["-p"] if parents else [])
        for k, v in (properties or {}).items():
            args += ["-o", "%s=%s" % (k, v)]
        self.zfs(*args, name)

    def snapshot(self, full: str, properties: dict[str, str] | None = None) -> None:
        args = ["snapshot"]
        for k, v in (properties or {}).items():
            args += ["-o", "%s=%s" % (k, v)]
        self.zfs(*args, full)

    def destroy(self, name: str, recursive: bool = False) -> None:
        """Destroy a dataset or snapshot; retried once because zfs-fuse reports a fresh one busy."""
        args = ["destroy"] + (["-r"] if recursive else []) + [name]
        try:
            self.zfs(*args)
        except ZfsError as err:
            if "busy" not in err.stderr:
                raise
            self.run(["sleep", "1"])
            self.zfs(*args)

    def rename(self, old: str, new: str) -> None:
        """Rename a filesystem; zfs-fuse refuses while mounted, so unmount and remount around it."""
        mounted = "@" not in old and self.get_one(old, "mounted") == "yes"
        if mounted:
            self.zfs("unmount", old)
        try:
            self.zfs("rename", old, new)
        except ZfsError:
            if mounted:
                self.zfs("mount", old)
            raise
        if mounted and self.get_one(new, "mounted") != "yes":
            self.zfs("mount", new)

    def mountpoint(self, dataset: str) -> str:
        """Where a filesystem is mounted, mounting it first if it is not."""
        values = self.get([dataset], ["mountpoint", "mounted"])[dataset]
        if values.get("mounted") != "yes":
            self.zfs("mount", dataset)
        return values["mountpoint"]

    def ensure_filesystem(self, dataset: str) -> str:
        """Create `dataset` (and parents) if missing and return its mountpoint."""
        if not self.exists(dataset):
            self.create(dataset)
        return self.mountpoint(dataset)


def ssh_target_from_params(params: dict, prefix: str) -> SshTarget | None:
    """The SshTarget described by a module's `<prefix>_host`, `_user`, `_port`, `_key` options."""
    host = params.get(prefix + "_host")
    if not host:
        return None
    return SshTarget(host=host, user=params.get(prefix + "_user") or "root",
                     port=int(params.get(prefix + "_port") or 22), key=params.get(prefix + "_key"),
                     options=list(params.get(prefix + "_ssh_options") or []))


def node_argument_spec(prefix: str) -> dict:
    """The options every module uses to reach a node by ssh (documented in the `node` fragment)."""
    return {
        prefix + "_host": {"type": "str"},
        prefix + "_user": {"type": "str", "default": "root"},
        prefix + "_port": {"type": "int", "default": 22},
        prefix + "_key": {"type": "path", "no_log": False},
        prefix + "_ssh_options": {"type": "list", "elements": "str", "default": []},
    }


def check_names(module, datasets: dict | None = None, snapshots: dict | None = None,
                pools: dict | None = None) -> None:
    """Fail the module, before any command runs, if a name is not a safe ZFS name."""
    checks = [(datasets, layout.invalid_dataset), (snapshots, layout.invalid_snapshot_name),
              (pools, layout.invalid_pool)]
    for names, invalid in checks:
        for option, value in (names or {}).items():
            if value is None:
                continue
            problem = invalid(value)
            if problem:
                module.fail_json(msg="%s: %s" % (option, problem), option=option)


def check_host(module, option: str, value: str | None) -> None:
    """Refuse a host name that ssh could read as an option."""
    if value and (value.startswith("-") or any(c.isspace() for c in value)):
        module.fail_json(msg="%s: '%s' is not a host name" % (option, value), option=option)


# -- restore, prune and listing ----------------------------------------------------------------
import time  # noqa: E402


def dataset_exists(node: Node, name: str) -> bool:
    """Whether `name` exists; raise ZfsError when the node cannot tell (ssh down), never guess False."""
    proc = node.run(["zfs", "list", "-H", "-o", "name", name], check=False)
    if proc.returncode == 0:
        return True
    if "does not exist" in proc.stderr:
        return False
    raise ZfsError(["zfs", "list", "-H", "-o", "name", name], proc.returncode, proc.stderr)


def snapshots_below(node: Node, root: str, properties: tuple[str, ...] = ()) -> list[Snapshot]:
    """Every snapshot of `root` and the datasets below it, oldest first, read with one `zfs get -r`."""
    props = ["guid", "createtxg", "creation"] + list(properties)
    out = node.zfs("get", "-Hp", "-r", "-o", "name,property,value", ",".join(props), root)
    values: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        name, prop, value = line.split("\t", 2)
        if "@" in name:
            values.setdefault(name, {})[prop] = value
    snaps = []
    for full, v in values.items():
        dataset, name = full.split("@", 1)
        snaps.append(Snapshot(dataset, name, v.get("guid", ""), int(v.get("createtxg", 0) or 0),
                              int(v.get("creation", 0) or 0), {p: v.get(p, "-") for p in properties}))
    return sorted(snaps, key=lambda s: s.createtxg)


def local_properties(node: Node, name: str) -> dict[str, str]:
    """The properties set on `name` itself (source `local`), exact values: what a copy must be given."""
    out = node.zfs("get", "-Hp", "-s", "local", "-o", "property,value", "all", name)
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def retry_busy(action, attempts: int = 20, delay: float = 0.5):
    """Call `action()` until zfs stops calling the dataset busy: zfs-fuse does for a while after I/O,
    a mount or an interrupted receive. Other errors, and the last busy one, are raised."""
    for attempt in range(attempts):
        try:
            return action()
        except ZfsError as err:
            if "busy" not in err.stderr or attempt == attempts - 1:
                raise
            time.sleep(delay)
