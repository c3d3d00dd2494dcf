# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A node: the machine the module runs on, or one reached from it by ssh, and what its ZFS can do.

Commands are argument lists; for ssh each argument is quoted for the remote shell, so no input ever
becomes shell syntax. Datasets and snapshots of a node are in dataset.py.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field


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
    receive_properties: bool = False  # zfs receive -o property=value, -x property


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
                              env=dict(os.environ, LC_ALL="C"), timeout=timeout, check=False)
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
                            send_estimate=True, resume=True, holds=True, bookmarks=True,
                            receive_properties=self._receive_takes_properties())
        uname = self.run(["uname", "-s"], check=False).stdout.strip()
        if uname == "SunOS":
            return Features("illumos", uname, list_parsable=True, set_many=True, send_compressed=True,
                            send_estimate=True, resume=True, holds=True, bookmarks=True,
                            receive_properties=self._receive_takes_properties())
        pool_version = self.run(["zpool", "upgrade", "-v"], check=False).stdout
        ver = ""
        for word in pool_version.split():
            if word.isdigit():
                ver = "pool version %s" % word
                break
        return Features("zfs-fuse", ver)

    def _receive_takes_properties(self) -> bool:
        """Whether `zfs receive` takes -o and -x, as its usage (printed when it is given nothing) says."""
        usage = self.run(["zfs", "receive"], check=False)
        text = usage.stdout + usage.stderr
        return "-o <property>" in text and "-x <property>" in text

    # -- zfs commands --------------------------------------------------------------------------
    def zfs(self, *args: str) -> str:
        return self.run(["zfs"] + list(args)).stdout

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
