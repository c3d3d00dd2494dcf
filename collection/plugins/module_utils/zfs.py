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
import re
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
    """What the ZFS on a node can do, each flag read from what its own `zfs` says it takes (its usage, one
    command), never from the implementation's name: a newer zfs-fuse or an older OpenZFS gets what it has."""

    implementation: str  # "openzfs", "illumos" or "zfs-fuse": recorded in manifests, never used to decide
    version: str = ""
    list_parsable: bool = False   # zfs list -p
    set_many: bool = False        # zfs set a=1 b=2 in one call
    send_compressed: bool = False  # zfs send -c
    send_large_blocks: bool = False  # zfs send -L
    send_raw: bool = False        # zfs send -w
    send_estimate: bool = False   # zfs send -nP
    resume: bool = False          # zfs receive -s, zfs send -t, zfs receive -A
    holds: bool = False           # zfs hold/release, and zfs holds -H to list them
    bookmarks: bool = False       # zfs bookmark
    receive_properties: bool = False  # zfs receive -o property=value, -x property

    FLAGS = ("list_parsable", "set_many", "send_compressed", "send_large_blocks", "send_raw", "send_estimate",
             "resume", "holds", "bookmarks", "receive_properties")

    @classmethod
    def from_usage(cls, text: str, implementation: str, version: str = "") -> "Features":
        """The features a `zfs` usage text shows (what `zfs` prints when given no command)."""
        flags = usage_flags(text)
        send, receive = flags.get("send", set()), flags.get("receive", set())
        return cls(implementation, version,
                   list_parsable="p" in flags.get("list", set()),
                   set_many=re.search(r"^\s+set (\[-\w+\] )?<property=value> \.\.\.", text, re.M) is not None,
                   send_compressed="c" in send, send_large_blocks="L" in send, send_raw="w" in send,
                   send_estimate={"n", "P"} <= send,
                   resume="t" in send and {"s", "A"} <= receive,
                   holds={"hold", "release"} <= set(flags) and "H" in flags.get("holds", set()),
                   bookmarks="bookmark" in flags,
                   receive_properties={"o", "x"} <= receive)

    def names(self) -> list[str]:
        """The flags this ZFS has, for results and test reports."""
        return [name for name in self.FLAGS if getattr(self, name)]

    def report(self) -> dict:
        """What the info modules return as C(zfs): the implementation, its version and its features."""
        return {"implementation": self.implementation, "version": self.version, "features": self.names()}


# A usage line: a tab or spaces, then a subcommand (or, indented further, the continuation of the last one).
USAGE_FLAG_RE = re.compile(r"(?:^|[\s\[|])-([A-Za-z]+)")


def usage_flags(text: str) -> dict[str, set[str]]:
    """Each subcommand of a `zfs` usage text with the one-letter options its lines show (`[-Hp]`, `-t`)."""
    flags: dict[str, set[str]] = {}
    command = None
    for line in text.splitlines():
        if not line[:1].isspace() or not line.strip():
            command = None if not line.strip() else command
            continue
        first = line.split()[0]
        if re.fullmatch(r"[a-z]+", first):
            command = first
            rest = line.strip()[len(first):]
        elif command is not None:
            rest = line
        else:
            continue
        found = flags.setdefault(command, set())
        for group in USAGE_FLAG_RE.findall(rest):
            found.update(group)
    return flags


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
        """Ask the node's `zfs` what it takes (its usage), and what it is, for the records."""
        usage = self.run(["zfs"], check=False)
        text = usage.stdout + usage.stderr
        if "usage" not in text:
            raise ZfsError(["zfs"], usage.returncode, text or "zfs did not print its usage")
        if re.search(r"^\s+version\b", text, re.M):
            version = self.run(["zfs", "version"], check=False).stdout.strip()
            return Features.from_usage(text, "openzfs", version.splitlines()[0] if version else "")
        system = self.run(["uname", "-s"], check=False).stdout.strip()
        return Features.from_usage(text, "illumos" if system == "SunOS" else "zfs-fuse", system)

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
