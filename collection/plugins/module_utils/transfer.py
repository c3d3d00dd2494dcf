# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a backup (send) and a restore share: this node, the compute node across the stream, the
stream's run, and the record of what was undone when the run failed."""

from __future__ import annotations

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout
from ansible_collections.vmbackup.zfs.plugins.module_utils.job import JobFailed
from ansible_collections.vmbackup.zfs.plugins.module_utils.stream import run_stream
from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import Node, ZfsError, ssh_target_from_params


class Transfer:
    """One run of a module that streams a VM disk between the backup node (here) and a compute node."""

    failed = JobFailed  # the exception type a failed stream raises

    def __init__(self, module, peer: str):
        self.module = module
        self.p = module.params
        self.local = Node()
        self.peer = Node(ssh_target_from_params(self.p, peer))
        self.kind = layout.backup_kind(self.p["type"])
        self.result: dict = {"changed": False, "cmd": ""}
        self.cleanup: list[str] = []

    def stream_flags(self, sender: Node, receiver: Node) -> list[str]:
        """`zfs send` flags both ends take: -c sends blocks as they are compressed on disk (no decompressing
        to send, fewer bytes on the wire), -L keeps blocks larger than 128 KiB whole. A node that lacks one
        (zfs-fuse) gets the plain stream it always had."""
        flags = []
        if sender.features.send_compressed and receiver.features.send_compressed:
            flags.append("-c")
        if sender.features.send_large_blocks and receiver.features.send_large_blocks:
            flags.append("-L")
        return flags

    def transfer(self, pipeline, total: int | None = None, capture: bool = False):
        """Run the stream, reporting progress; a failed stage raises `failed`."""
        self.result["cmd"] = str(pipeline)
        return run_stream(pipeline, self.p["progress_file"], total, self.failed, capture)

    def attempt(self, label: str, action) -> bool:
        """One step of an undo: record it (unless it says False, nothing to do) or its failure."""
        try:
            if action() is not False:
                self.cleanup.append(label)
            return True
        except (ZfsError, OSError) as err:
            self.cleanup.append("FAILED to %s: %s" % (label, err))
            return False
