# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Manifests and backup files written safely: a crash leaves the old file or the new one, never half."""

from __future__ import annotations

import json
import os
import subprocess

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout

PART_MARK = ".part-"
# The snapshot properties that say which backup a snapshot is (set by backup_properties()).
BACKUP_PROPERTIES = (layout.PROP_BACKUP, layout.PROP_DEFINITION, layout.PROP_VM_UUID, layout.PROP_HOSTNAME,
                     layout.PROP_DISK_ID, layout.PROP_CREATED, layout.PROP_TYPE)


def write_json_atomic(path: str, data: dict) -> None:
    """Write JSON so that a crash leaves the old file or the new one, never half of one."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = "%s%s%d" % (path, PART_MARK, os.getpid())
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(folder)


def fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_parts(folder: str) -> list[str]:
    """Delete `*.part-<pid>` files left by runs that were killed (their pid no longer runs)."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for entry in os.listdir(folder):
        if PART_MARK not in entry:
            continue
        pid = entry.rsplit(PART_MARK, 1)[1]
        if pid.isdigit() and not _running(int(pid)):
            os.unlink(os.path.join(folder, entry))
            removed.append(os.path.join(folder, entry))
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_manifest(path: str) -> dict | None:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def sha256_of(path: str) -> str:
    """sha256 of a file, read by sha256sum (no data through Python)."""
    out = subprocess.run(["sha256sum", path], capture_output=True, text=True, check=True).stdout
    return out.split()[0]


def backup_properties(backup: str, definition: str | None, vm_uuid: str, hostname: str | None,
                      disk_id: int, created: str, kind: str) -> dict[str, str]:
    """The user properties that mark a snapshot as a vmbackup backup."""
    props = {layout.PROP_BACKUP: backup, layout.PROP_VM_UUID: vm_uuid,
             layout.PROP_DISK_ID: str(disk_id), layout.PROP_CREATED: created, layout.PROP_TYPE: kind}
    if definition:
        props[layout.PROP_DEFINITION] = definition
    if hostname:
        props[layout.PROP_HOSTNAME] = hostname
    return props
