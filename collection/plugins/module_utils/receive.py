# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Receiving a stream that a compute node made: a stranger's data, which nothing mounts, runs or places.

A compute node may be in hostile hands, and it controls every byte that comes back from `ssh <node> zfs send
...`, whatever was asked: a replication stream (`-R`, with children) or a dataset whose own properties (`-p`)
say `mountpoint=/usr/local/sbin`, `exec=on`, `setuid=on`. Received with `-u` alone, such a backup mounts at the
backup node's next `zfs mount -a`, over a folder the backup node runs programs from. So every receive on a
backup node (backups, and the drills' scratch datasets) overrides what the stream says:

- the parent (`<zpool>/backups/ds`, `<zpool>/backups/verify`) has `canmount=off`, `exec=off`, `setuid=off`,
  `devices=off` (`prepare_parent`);
- a file system is received with `-x mountpoint` (it stays inherited, inside the backup layout) and
  `canmount=noauto` (no `zfs mount -a`), `readonly=on`, `exec=off`, `setuid=off`, `devices=off`;
- a volume with `readonly=on` and `volmode=none` for a backup (no device node: the kernel never scans a
  stranger's partition table) or `volmode=dev` for a drill's scratch (the whole device, no partitions), and
  `-x` of mountpoint, exec, setuid and devices: should the stream hold a file system after all, it gets no
  mountpoint of its own and inherits the parent's `exec=off` (OpenZFS 2.3 takes `-o volmode` for a file
  system stream, and warns of each `-x` that a volume does not have).

A volume stream where a file system is expected fails at once (`-o canmount` does not apply to volumes);
`check()` refuses the rest after the receive: another type than the source's, or datasets below the target
(a replication stream), which it destroys; the caller undoes the receive. Where `zfs receive` has no
`-o/-x` (zfs-fuse, pool version 23) `check()` sets the same properties right after the receive, before
anything could mount it (`-u`): there a `zfs mount -a` run in between could still mount it, inside the
backup layout, with the parent's exec=off.
"""

from __future__ import annotations

from ansible_collections.vmbackup.zfs.plugins.module_utils.dataset import Dataset
from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import Node, ZfsError

PARENT = {"canmount": "off", "exec": "off", "setuid": "off", "devices": "off"}
FILESYSTEM = {"canmount": "noauto", "readonly": "on", "exec": "off", "setuid": "off", "devices": "off"}
VOLUME = {"readonly": "on", "volmode": "none"}
SCRATCH_VOLUME = {"readonly": "on", "volmode": "dev"}
FILESYSTEM_ONLY = ("mountpoint", "exec", "setuid", "devices")


class ReceiveRefused(Exception):
    """What was received is not what the source should have sent."""


def overrides(kind: str, scratch: bool = False) -> dict[str, str]:
    """The properties a received `kind` ("filesystem" or "volume") gets, whatever its stream says."""
    if kind == "volume":
        return dict(SCRATCH_VOLUME if scratch else VOLUME)
    return dict(FILESYSTEM)


def receive_argv(node: Node, target: str, kind: str, force: bool = False, scratch: bool = False,
                 resumable: bool = False) -> list[str]:
    """`zfs receive` into `target` of a stream that must hold a `kind`, with what its stream says overridden;
    `resumable` (-s): a cut stream leaves a resume token on `target` instead of nothing."""
    argv = ["zfs", "receive", "-u"] + (["-F"] if force else []) + (["-s"] if resumable else [])
    if node.features.receive_properties:
        for prop in ("mountpoint",) if kind == "filesystem" else FILESYSTEM_ONLY:
            argv += ["-x", prop]
        for prop, value in overrides(kind, scratch).items():
            argv += ["-o", "%s=%s" % (prop, value)]
    return argv + [target]


def prepare_parent(node: Node, parent: str) -> None:
    """Make `parent` (the folder dataset of received datasets) or give it PARENT's properties."""
    dataset = Dataset(node, parent)
    if not dataset.exists():
        node.create(parent, dict(PARENT))
        return
    values = dataset.properties(list(PARENT))
    wrong = {k: v for k, v in PARENT.items() if values.get(k) != v}
    if wrong:
        node.set(parent, wrong)


def check(node: Node, target: str, kind: str, source: str, scratch: bool = False) -> None:
    """After a receive into `target`: raise ReceiveRefused unless it holds a `kind` with nothing below it
    (`source` names where the stream came from, for the message). Where the receive could not override
    properties, set them now. Datasets that came along below the target are destroyed here."""
    dataset = Dataset(node, target)
    received = dataset.get("type")
    children = dataset.children()
    for child in sorted(children, key=len, reverse=True):
        try:
            Dataset(node, child).destroy(recursive=True)
        except ZfsError:
            pass
    if children:
        raise ReceiveRefused("%s sent a replication stream: %s came with datasets below it (%s), refused"
                             % (source, target, ", ".join(children)))
    if received != kind:
        raise ReceiveRefused("%s sent a %s where its disk is a %s: refused" % (source, received, kind))
    if not node.features.receive_properties:
        if kind == "filesystem":
            node.zfs("inherit", "mountpoint", target)
        node.set(target, overrides(kind, scratch))
