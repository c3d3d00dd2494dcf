# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The scratch dataset of a verify drill: named for the drill's process, read only, always destroyed.

A scratch dataset is made by a `zfs receive` (the backup restored on the backup node) or by a read-only
clone of a snapshot (a compute node without `.zfs/snapshot`); nothing else is ever destroyed as one.
"""

from __future__ import annotations

import os

from ansible_collections.vmbackup.zfs.plugins.module_utils import digest, layout
from ansible_collections.vmbackup.zfs.plugins.module_utils.dataset import Dataset, retry_busy
from ansible_collections.vmbackup.zfs.plugins.module_utils.manifest import _running
from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import ZfsError


class Scratch(Dataset):
    """A scratch dataset of this process below `parent`."""

    def __init__(self, node, parent: str, leaf: str):
        super().__init__(node, layout.verify_scratch_name(parent, leaf, os.getpid()))
        self.parent = parent

    def clone_of(self, snapshot: str) -> "Scratch":
        """Make it a read-only clone of `snapshot` (a snapshot's data costs no space to expose)."""
        self.node.zfs("clone", "-o", "readonly=on", snapshot, self.name)
        return self

    def readable(self) -> tuple[str, str]:
        """('filesystem', its mountpoint) mounted read only, or ('volume', its device)."""
        kind = self.get("type")
        if kind == "volume":
            device = digest.volume_device(self.name)
            digest.wait_for_device(device)
            return kind, device
        if self.get("readonly") != "on":
            self.node.set(self.name, {"readonly": "on"})
        return kind, self.mountpoint()

    def drop(self) -> bool:
        """Unmount and destroy it with its snapshots; False when there is nothing to destroy.

        A killed `zfs receive` removes its half-received dataset itself, maybe while we look: gone counts as done.
        """
        try:
            if not self.exists():
                return False
            if self.get("mounted") == "yes":
                self.unmount()
            self.destroy(recursive=True)
        except ZfsError:
            if self.exists():
                raise
            return False
        return True


def drop_stale(node, parent: str, origin_prefix: str | None = None) -> list[str]:
    """Destroy the scratch datasets below `parent` whose drill no longer runs (killed outright).

    With `origin_prefix`, only clones of those snapshots count (on a compute node, next to VM disks).
    """
    if not Dataset(node, parent).exists():
        return []
    dropped = []
    for name in Dataset(node, parent).children():
        pid = layout.verify_scratch_pid(name)
        if pid is None or pid == os.getpid() or _running(pid):
            continue
        if origin_prefix is not None and not node.get_one(name, "origin").startswith(origin_prefix):
            continue
        try:
            retry_busy(lambda name=name: node.zfs("destroy", "-r", name))
            dropped.append(name)
        except ZfsError:
            pass  # busy or held: the next drill tries again
    return dropped
