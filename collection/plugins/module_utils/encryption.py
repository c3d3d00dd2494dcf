# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Native ZFS encryption: which disks have it, and how their backups keep the key on the compute node.

An encrypted disk is backed up raw (`zfs send -w`): the stream holds its blocks as they are on disk, encrypted,
with the disk's master key wrapped by the user's key. The backup node receives it raw and never needs the key
(its copy says `keystatus=unavailable`): it can send it back, and a drill can receive it into scratch and hash
the raw stream (rawstream.py), but nothing on the backup node reads the data. A restore sends it back raw and
loads the key on the compute node, from where the disk's encryption root keeps it (`keylocation`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.vmbackup.zfs.plugins.module_utils.zfs import Node

RAW_FLAG = "-w"


@dataclass
class Encryption:
    """How a dataset is encrypted: its cipher, its encryption root and where that root's key is read from."""

    cipher: str
    root: str
    keyformat: str
    keylocation: str
    keystatus: str

    def record(self) -> dict:
        """What a manifest keeps: enough to know how the restored disk gets its key, never the key."""
        return {"cipher": self.cipher, "encryption_root": self.root, "keyformat": self.keyformat,
                "keylocation": self.keylocation}


def encryption_of(node: Node, name: str) -> Encryption | None:
    """The encryption of dataset or snapshot `name` on `node`, None when it has none (or its ZFS has none)."""
    if not node.features.send_raw:
        return None
    values = node.get([name], ["encryption", "encryptionroot", "keyformat", "keystatus"])[name]
    if values.get("encryption", "off") in ("off", "-", ""):
        return None
    root = values.get("encryptionroot") or name.split("@", 1)[0]
    return Encryption(values["encryption"], root, values.get("keyformat", "-"), node.get_one(root, "keylocation"),
                      values.get("keystatus", "-"))


def is_raw(send_flags) -> bool:
    """Whether a stream was sent raw, from the `send_flags` a manifest recorded."""
    return RAW_FLAG in (send_flags or [])
