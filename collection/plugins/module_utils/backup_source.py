# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Where a backup's stream comes from on this backup node: the snapshot of a dataset backup, or the file of a
file backup once its sha256 matches its manifest. What a restore and a verify drill read."""

from __future__ import annotations

import os

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout, listing, manifest, stream
from ansible_collections.vmbackup.zfs.plugins.module_utils.dataset import Dataset
from ansible_collections.vmbackup.zfs.plugins.module_utils.job import JobFailed


class BackupMissing(JobFailed):
    """The backup is not on this node, or cannot be read as one."""


class ChecksumMismatch(JobFailed):
    """The backup file's sha256 is not the one its manifest recorded."""


def dataset_snapshot(node, zpool: str, vm_uuid: str, disk: int, backup: str) -> str:
    """The snapshot that holds a dataset backup: in the disk's backup dataset, or in one kept aside."""
    snapshot = "%s@%s" % (layout.dataset_backup_target(zpool, vm_uuid, disk), backup)
    if Dataset(node, snapshot).exists():
        return snapshot
    # The backup may be named apart from its snapshot, or live in a dataset kept aside.
    found = [b["path"] for b in listing.dataset_backups(node, zpool)
             if b["vm_uuid"] == vm_uuid and b["disk"] == disk and b["name"] == backup and b["dataset"]]
    if not found:
        raise BackupMissing("backup: %s of %s is not on this node (no snapshot %s)"
                            % (backup, layout.disk_leaf(vm_uuid, disk), snapshot))
    return found[-1]


def dataset_manifest(node, zpool: str, vm_uuid: str, disk: int, backup: str) -> dict | None:
    """The manifest of a dataset backup, or None when there is none to read."""
    mount = Dataset(node, layout.manifest_root(zpool)).mounted_at()
    return manifest.read_manifest(layout.dataset_manifest_path(mount, vm_uuid, disk, backup)) if mount else None


def backup_file(node, zpool: str, vm_uuid: str, disk: int, backup: str, file_path: str | None = None) -> str:
    """The file of a file backup: `file_path`, or the one found in the disk's folder whatever its compression."""
    path = file_path
    if not path:
        mount = Dataset(node, layout.file_backup_root(zpool)).mounted_at()
        found = listing.find_backup_files(mount, vm_uuid, disk, backup) if mount else []
        if not found:
            raise BackupMissing("backup: %s of %s is not on this node" % (backup, layout.disk_leaf(vm_uuid, disk)))
        if len(found) > 1:
            raise BackupMissing("backup: %s has several files (%s); say which with file_path"
                                % (backup, ", ".join(found)))
        path = found[0]
    try:
        layout.compression_of_file(path)
    except ValueError as err:
        raise BackupMissing("file_path: %s" % err) from err
    if not os.path.isfile(path):
        raise BackupMissing("file_path: %s does not exist" % path)
    return path


def file_manifest(path: str, backup: str) -> dict:
    """The manifest of a backup file, which must hold its checksum and name this backup."""
    record = manifest.read_manifest(layout.file_manifest_path(path))
    if not record or not record.get("checksum"):
        raise BackupMissing("%s has no readable manifest with a checksum (%s): it cannot be verified"
                            % (path, layout.file_manifest_path(path)))
    if record.get("backup") not in (None, backup):
        raise BackupMissing("file_path: %s holds the backup %s, not %s" % (path, record["backup"], backup))
    return record


def check_file(path: str, record: dict) -> str:
    """The file's sha256 (read by sha256sum), once it matches the manifest's; raise ChecksumMismatch if not."""
    checksum = manifest.sha256_of(path)
    if checksum != record["checksum"]:
        raise ChecksumMismatch("checksum mismatch: the file's sha256 is %s, the manifest says %s (%s)"
                               % (checksum, record["checksum"], path), checksum=checksum)
    return checksum


def file_reader(path: str) -> list[str]:
    """The command that writes the file's send stream to stdout, decompressed by its extension."""
    decompress = stream.decompress_stage(layout.compression_of_file(path))
    return decompress + [path] if decompress else ["cat", path]
