# -*- coding: utf-8 -*-
# Copyright (c) 2026, vmbackup developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The backups a backup node holds, read from the node alone: snapshots, files and manifests."""

from __future__ import annotations

import os

from ansible_collections.vmbackup.zfs.plugins.module_utils import layout
from ansible_collections.vmbackup.zfs.plugins.module_utils.dataset import Dataset
from ansible_collections.vmbackup.zfs.plugins.module_utils.manifest import BACKUP_PROPERTIES, PART_MARK, read_manifest


def _disk_id(value, disk: int) -> int:
    return int(value) if str(value).isdigit() else disk + 1


def dataset_backups(node, zpool: str) -> list[dict]:
    """The dataset backups in `zpool`, oldest first: one item per snapshot below <zpool>/backups/ds
    (kept-aside datasets included), plus manifests whose snapshot is gone (with a `problem`)."""
    root = layout.dataset_backup_root(zpool)
    if not Dataset(node, root).exists():
        return []
    manifest_mount = Dataset(node, layout.manifest_root(zpool)).mounted_at()
    items, seen = [], set()
    for snap in Dataset(node, root).snapshots_below(BACKUP_PROPERTIES + ("referenced", "used", "userrefs")):
        parsed = layout.backup_dataset_leaf(snap.dataset.rsplit("/", 1)[-1])
        if snap.dataset == root or parsed is None:
            continue  # not a VM disk's backup dataset
        vm_uuid, disk, aside = parsed
        props = {k: (None if v == "-" else v) for k, v in snap.properties.items()}
        name = props[layout.PROP_BACKUP] or snap.name
        item = {"name": name, "vm_uuid": vm_uuid, "hostname": props[layout.PROP_HOSTNAME], "disk": disk,
                "disk_id": _disk_id(props[layout.PROP_DISK_ID], disk), "definition": props[layout.PROP_DEFINITION],
                "created": props[layout.PROP_CREATED] or layout.utc_stamp(snap.creation),
                "size": int(props["referenced"] or 0), "type": "dataset", "path": snap.full, "checksum": None,
                "dataset": snap.dataset, "snapshot": snap.name, "guid": snap.guid, "createtxg": snap.createtxg,
                "referenced": int(props["referenced"] or 0), "used": int(props["used"] or 0),
                "kept_aside": aside, "manifest": None, "problem": None,
                "holds": int(props["userrefs"]) if (props.get("userrefs") or "").isdigit() else None}
        if props[layout.PROP_BACKUP] is None:
            item["problem"] = "the snapshot has no vmbackup properties: not made by vmbackup, or not finished"
        if manifest_mount:
            path = layout.dataset_manifest_path(manifest_mount, vm_uuid, disk, name)
            manifest = read_manifest(path) if os.path.exists(path) else None
            if manifest is not None:
                item["manifest"] = path
                if isinstance(manifest.get("size"), int):
                    item["size"] = manifest["size"]  # the bytes sent, as the backup reported them
                seen.add(path)
        items.append(item)
    if manifest_mount:
        items += _orphan_dataset_manifests(manifest_mount, seen)
    return items


def _orphan_dataset_manifests(manifest_mount: str, seen: set) -> list[dict]:
    """Manifests of dataset backups whose snapshot no longer exists."""
    orphans = []
    folder = os.path.join(manifest_mount, "ds")
    for leaf in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        parsed = layout.backup_dataset_leaf(leaf)
        if parsed is None:
            continue
        vm_uuid, disk, _aside = parsed
        for entry in sorted(os.listdir(os.path.join(folder, leaf))):
            path = os.path.join(folder, leaf, entry)
            if not entry.endswith(".json") or PART_MARK in entry or path in seen:
                continue
            manifest = read_manifest(path) or {}
            orphans.append({
                "name": manifest.get("backup") or entry[:-len(".json")], "vm_uuid": vm_uuid,
                "hostname": manifest.get("hostname"), "disk": disk,
                "disk_id": _disk_id(manifest.get("disk_id"), disk), "definition": manifest.get("definition"),
                "created": manifest.get("created"), "size": manifest.get("size"), "type": "dataset",
                "path": (manifest.get("target") or {}).get("snapshot"), "checksum": None, "dataset": None,
                "snapshot": None, "guid": None, "createtxg": None, "kept_aside": False, "manifest": path,
                "problem": "manifest without snapshot: the backup's data is gone from this node"})
    return orphans


def file_backups(node, zpool: str) -> list[dict]:
    """The file backups in `zpool`, oldest first: each file with its manifest; a file without manifest
    or a manifest without file is listed with a `problem`."""
    mount = Dataset(node, layout.file_backup_root(zpool)).mounted_at()
    if mount is None:
        return []
    items = []
    for vm_uuid in sorted(os.listdir(mount)):
        if layout.invalid_uuid(vm_uuid) or not os.path.isdir(os.path.join(mount, vm_uuid)):
            continue
        for disk_dir in sorted(os.listdir(os.path.join(mount, vm_uuid))):
            if not (disk_dir.startswith("disk") and disk_dir[4:].isdigit()) or \
                    not os.path.isdir(os.path.join(mount, vm_uuid, disk_dir)):
                continue
            items += _file_backups_of_disk(os.path.join(mount, vm_uuid, disk_dir), vm_uuid.lower(), int(disk_dir[4:]))
    return sorted(items, key=lambda i: (i["created"] or "", i["name"]))


def _file_backups_of_disk(folder: str, vm_uuid: str, disk: int) -> list[dict]:
    entries = [e for e in os.listdir(folder) if PART_MARK not in e]
    files = [e for e in entries if layout.backup_of_file(e)]
    manifests = [e for e in entries if e.endswith(".json") and layout.backup_of_file(e[:-len(".json")])]
    items = []
    for entry in sorted(set(files) | {m[:-len(".json")] for m in manifests}):
        path = os.path.join(folder, entry)
        manifest_path = layout.file_manifest_path(path)
        has_file, has_manifest = entry in files, entry + ".json" in manifests
        manifest = read_manifest(manifest_path) if has_manifest else None
        data = manifest or {}
        created = data.get("created")
        if created is None and has_file:
            created = layout.utc_stamp(int(os.path.getmtime(path)))
        item = {"name": data.get("backup") or layout.backup_of_file(entry), "vm_uuid": vm_uuid,
                "hostname": data.get("hostname"), "disk": disk, "disk_id": _disk_id(data.get("disk_id"), disk),
                "definition": data.get("definition"), "created": created,
                "size": os.path.getsize(path) if has_file else data.get("size"), "type": "file", "path": path,
                "checksum": data.get("checksum"), "compression": layout.compression_of_file(path),
                "manifest": manifest_path if has_manifest else None, "problem": None}
        if not has_file:
            item["problem"] = "manifest without file: the backup's data is gone from this node"
        elif not has_manifest:
            item["problem"] = "file without manifest: its checksum cannot be verified"
        elif manifest is None:
            item["problem"] = "the manifest cannot be read"
        items.append(item)
    return items


def find_backup_files(mount: str, vm_uuid: str, disk: int, backup: str) -> list[str]:
    """The files of a file backup that exist, whatever their compression (normally one)."""
    folder = layout.file_backup_dir(mount, vm_uuid, disk)
    paths = [os.path.join(folder, layout.file_backup_name(backup, c)) for c in layout.COMPRESSION]
    return [p for p in paths if os.path.isfile(p)]
