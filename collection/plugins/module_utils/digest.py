# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The content digest of a VM disk's data, by a pipeline of streaming tools (no data through Python), and the
raw stream digest of an encrypted one (whose data nobody without its key reads: rawstream.py).

A filesystem is read as a tar stream sorted by name, with numeric owners, the GNU format and every mtime
set to 0, so the same files give the same bytes on the compute node (a snapshot) and on the backup node (a
restored copy); a volume is read whole from its device with dd. The stream goes through the meter (pv:
rate limit, byte count) into sha256.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from ansible_collections.vmbackup.zfs.plugins.module_utils import rawstream, stream
from ansible_collections.vmbackup.zfs.plugins.module_utils.pipeline import Pipeline

TAR_OPTIONS = ["--sort=name", "--format=gnu", "--numeric-owner", "--mtime=@0", "--one-file-system"]


def gnu_tar() -> str:
    """GNU tar's command (`tar` on Linux, `gtar` on illumos and the BSDs); --sort needs GNU tar 1.28+."""
    for name in ("tar", "gtar"):
        if shutil.which(name):
            out = subprocess.run([name, "--version"], capture_output=True, text=True, check=False).stdout
            if "GNU tar" in out:
                return name
    raise RuntimeError("a content digest of a filesystem needs GNU tar (tar or gtar) on this node; install it")


def filesystem_reader(root: str) -> list[str]:
    """The tar stream of the files below `root`, the same bytes for the same data wherever it is mounted."""
    return [gnu_tar(), "-C", root] + TAR_OPTIONS + ["-cf", "-", "."]


def volume_reader(device: str) -> list[str]:
    return ["dd", "if=" + device, "bs=1048576"]


def volume_device(name: str) -> str:
    """The block device of a volume (or of a volume's snapshot with snapdev=visible)."""
    if sys.platform.startswith("sunos"):
        return "/dev/zvol/rdsk/" + name
    return "/dev/zvol/" + name


def wait_for_device(path: str, timeout: float = 30.0) -> None:
    """Wait until udev (or devfsadm) has made a new volume's device node."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError("the device %s did not appear within %d s" % (path, timeout))
        time.sleep(0.2)


def pipeline(reader: list[str], bwlimit: int) -> Pipeline:
    """reader | meter | sha256: the digest is the last stage's first word once it has run."""
    label = "tar" if reader[0] in ("tar", "gtar") else reader[0]
    return (Pipeline().add(reader, label).add(stream.meter_stage(bwlimit), "meter")
            .add(stream.checksum_stage(), "sha256"))


def raw_pipeline(snapshot: str, bwlimit: int) -> Pipeline:
    """zfs send -w | meter | raw stream digest: what an encrypted snapshot is, read without its key (rawstream.py);
    the same wherever the snapshot was sent from."""
    return (Pipeline().add(["zfs", "send", "-w", snapshot], "zfs send").add(stream.meter_stage(bwlimit), "meter")
            .add(rawstream.stage(), "raw digest"))


def digest_of(ran: Pipeline) -> str:
    return ran.stdout.decode().split()[0]
