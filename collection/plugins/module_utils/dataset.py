# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A ZFS dataset and its snapshots on a node, with what can be done to them.

Every change that zfs-fuse may refuse as "dataset is busy" (right after a mount, a create or an
interrupted receive) goes through retry_busy(); nothing else retries.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from dataclasses import dataclass, field

from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import Node, ZfsError

SNAPSHOT_PROPERTIES = ("guid", "createtxg", "creation")
# The user hold vmbackup puts on the base of the next incremental, on both sides, where the ZFS has holds:
# a `zfs destroy` of it by anyone else fails ("dataset is busy") until vmbackup releases it.
HOLD_TAG = "vmbackup"


def retry_busy(action, attempts: int = 20, delay: float = 0.5):
    """Call `action()` until zfs stops calling the dataset busy; other errors, and the last busy one, raise."""
    for attempt in range(attempts):
        try:
            return action()
        except ZfsError as err:
            if "busy" not in err.stderr or attempt == attempts - 1:
                raise
            time.sleep(delay)
    return None


@contextlib.contextmanager
def pool_lock(pool: str):
    """An exclusive lock of this node's modules on `pool` (a file in /var/run, or the temp dir)."""
    folder = "/var/run" if os.path.isdir("/var/run") and os.access("/var/run", os.W_OK) else tempfile.gettempdir()
    fd = os.open(os.path.join(folder, "vmbackup-pool-%s.lock" % pool), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class Snapshot:
    """A snapshot of a dataset, with its guid (the same on both sides of a send) and txg order."""

    dataset: str
    name: str
    guid: str = ""
    createtxg: int = 0
    creation: int = 0
    properties: dict = field(default_factory=dict)

    @property
    def full(self) -> str:
        return "%s@%s" % (self.dataset, self.name)

    @classmethod
    def from_values(cls, full: str, values: dict[str, str], properties: tuple[str, ...] = ()) -> "Snapshot":
        """The snapshot `dataset@name` described by `zfs get -p` values."""
        dataset, name = full.split("@", 1)
        return cls(dataset, name, values.get("guid", ""), int(values.get("createtxg", 0) or 0),
                   int(values.get("creation", 0) or 0), {p: values.get(p, "-") for p in properties})


def oldest_first(values: dict[str, dict[str, str]], properties: tuple[str, ...] = ()) -> list[Snapshot]:
    """The snapshots among `zfs get` values ({name: {property: value}}), oldest first by transaction group."""
    snaps = [Snapshot.from_values(name, v, properties) for name, v in values.items() if "@" in name]
    return sorted(snaps, key=lambda s: s.createtxg)


class Dataset:
    """A filesystem, volume or snapshot of a node, by name."""

    def __init__(self, node: Node, name: str):
        self.node = node
        self.name = name

    def __str__(self) -> str:
        return self.name

    def exists(self) -> bool:
        """Whether it exists; raise ZfsError when the node cannot tell (ssh down), never guess False."""
        args = ["zfs", "list", "-H", "-o", "name", self.name]
        proc = self.node.run(args, check=False)
        if proc.returncode == 0:
            return True
        if "does not exist" in proc.stderr:
            return False
        raise ZfsError(args, proc.returncode, proc.stderr)

    def get(self, prop: str) -> str:
        """One exact property value ('-' for an unset user property)."""
        return self.node.get_one(self.name, prop)

    def properties(self, props: list[str]) -> dict[str, str]:
        return self.node.get([self.name], props)[self.name]

    def local_properties(self) -> dict[str, str]:
        """The properties set on it (source `local`), exact values: what a copy must be given."""
        out = self.node.zfs("get", "-Hp", "-s", "local", "-o", "property,value", "all", self.name)
        return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)

    def children(self) -> list[str]:
        """The filesystems and volumes directly below it."""
        out = self.node.zfs("list", "-H", "-o", "name", "-t", "filesystem,volume", "-d", "1", self.name)
        return [n for n in out.splitlines() if n != self.name]

    def snapshots(self, properties: tuple[str, ...] = ()) -> list[Snapshot]:
        """Its own snapshots, oldest first."""
        out = self.node.zfs("list", "-H", "-o", "name", "-t", "snapshot", "-d", "1", self.name)
        names = [n for n in out.splitlines() if n.startswith(self.name + "@")]
        return oldest_first(self.node.get(names, list(SNAPSHOT_PROPERTIES + tuple(properties))), properties)

    def snapshots_below(self, properties: tuple[str, ...] = ()) -> list[Snapshot]:
        """Its snapshots and those of every dataset below it, oldest first, read with one `zfs get -r`."""
        props = ",".join(SNAPSHOT_PROPERTIES + tuple(properties))
        out = self.node.zfs("get", "-Hp", "-r", "-o", "name,property,value", props, self.name)
        values: dict[str, dict[str, str]] = {}
        for line in out.splitlines():
            name, prop, value = line.split("\t", 2)
            values.setdefault(name, {})[prop] = value
        return oldest_first(values, properties)

    def mountpoint(self, mount: bool = True) -> str | None:
        """Where the filesystem is mounted, mounting it first (`mount`), else None when it is not mounted."""
        values = self.properties(["mountpoint", "mounted"])
        if values.get("mounted") == "yes":
            return values["mountpoint"]
        if not mount:
            return None
        retry_busy(lambda: self.node.zfs("mount", self.name))
        return values["mountpoint"]

    def mounted_at(self) -> str | None:
        """Where it is mounted, or None when it is missing or not mounted (nothing is mounted here)."""
        return self.mountpoint(mount=False) if self.exists() else None

    def ensure_filesystem(self) -> str:
        """Create it (and its parents) if missing; return its mountpoint, its parents mounted first.

        Backups from several compute nodes may create the same parents at once (`<pool>/backups/...`):
        a create that failed while the dataset now exists (another made it, or only its mount failed) goes
        on, and a parent left unmounted is mounted before its child (zfs-fuse answers a child's mount in
        an unmounted parent with "busy" for ever).
        """
        mounted = self.mounted_at()
        if mounted:
            return mounted
        # One at a time per pool on this node: zfs-fuse leaves a parent unmountable when two `zfs create -p`
        # of it race (its mountpoint directory gets a child's), OpenZFS answers the loser "already exists".
        with pool_lock(self.name.split("/")[0]):
            if not self.exists():
                try:
                    self.node.create(self.name)
                except ZfsError:
                    if not self.exists():
                        raise
            parts = self.name.split("/")
            for depth in range(2, len(parts)):
                Dataset(self.node, "/".join(parts[:depth])).mountpoint()
            return self.mountpoint()

    def unmount(self) -> None:
        retry_busy(lambda: self.node.zfs("unmount", self.name))

    def mount(self) -> None:
        retry_busy(lambda: self.node.zfs("mount", self.name))

    def destroy(self, recursive: bool = False) -> None:
        """Destroy it (with what is below it: `recursive`), releasing vmbackup's own holds first; a hold of
        anyone else still refuses the destroy (never `-f`, never `-d`)."""
        if self.node.features.holds and ("@" in self.name or recursive):
            release_holds(self.node, [self.name] if "@" in self.name else
                          [s.full for s in self.snapshots_below()])
        args = ["destroy"] + (["-r"] if recursive else []) + [self.name]
        retry_busy(lambda: self.node.zfs(*args))

    def rename(self, new: str) -> "Dataset":
        """Rename a filesystem; zfs-fuse refuses while mounted, so unmount and remount around it."""
        mounted = "@" not in self.name and self.get("mounted") == "yes"
        if mounted:
            self.unmount()
        try:
            retry_busy(lambda: self.node.zfs("rename", self.name, new))
        except ZfsError:
            if mounted:
                self.mount()
            raise
        renamed = Dataset(self.node, new)
        if mounted and renamed.get("mounted") != "yes":
            renamed.mount()
        return renamed


# -- holds ------------------------------------------------------------------------------------------
def held(node: Node, snapshots: list[str]) -> set[str]:
    """Which of `snapshots` carry vmbackup's hold (one `zfs holds`)."""
    if not snapshots:
        return set()
    out = node.zfs("holds", "-H", *snapshots)
    found = set()
    for line in out.splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1] == HOLD_TAG:
            found.add(fields[0])
    return found


def release_holds(node: Node, snapshots: list[str]) -> list[str]:
    """Release vmbackup's hold where one of `snapshots` has it; return those released."""
    mine = sorted(held(node, snapshots))
    if mine:
        node.zfs("release", HOLD_TAG, *mine)
    return mine


def move_hold(node: Node, keep: str, others: list[str]) -> list[str]:
    """Hold `keep` (the base of the next incremental), then release the hold of the `others` that have it
    (the bases before it); return those released. Holding first: the chain is never without a held base."""
    if keep not in held(node, [keep]):
        node.zfs("hold", HOLD_TAG, keep)
    return release_holds(node, [s for s in others if s != keep])
